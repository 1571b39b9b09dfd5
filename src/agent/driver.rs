//! The loop that drives one node's [`AgentState`]: observe, decide, act,
//! persist. Each call to [`Agent::tick`] does one step and says how long to
//! wait before the next; the step for every state is safe to repeat.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::pace;
use super::ports::{
    AgentEvent, Cluster, DrainResult, GateStatus, Host, LeaseOutlook, PortError, Reporter,
};
use super::state::{AgentState, Cordon, Step};
use crate::config::Settings;
use crate::logging::msgid;
use crate::store::{Store, StoreError};

/// kv keys the CLI writes and the agent reads (and the reverse).
pub mod keys {
    /// Set by `drydock resume`: retry a failed step.
    pub const RESUME_REQUESTED: &str = "resume-requested";
    /// Set by `drydock release --force`: give the slot up.
    pub const FORCE_RELEASE: &str = "force-release-requested";
    /// Written by the agent for `drydock status`.
    pub const LAST_STATUS: &str = "agent.status";
    pub const LAST_GATES: &str = "agent.gates";
    pub const REBOOT_NEED: &str = "agent.reboot-need";
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("persisting agent state: {0}")]
    Store(#[from] StoreError),
    /// A failpoint stopped the agent right after a persisted step (tests).
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
/// returning true stops the agent there, as a crash would.
pub type Failpoint = Arc<dyn Fn(&'static str) -> bool + Send + Sync>;

pub struct Agent<H, C, R> {
    pub node: String,
    settings: Settings,
    store: Store,
    host: H,
    cluster: C,
    reporter: R,
    state: AgentState,
    last_status: String,
    wake: Arc<Notify>,
    failpoint: Option<Failpoint>,
    /// When the last reboot request was accepted in this process.
    reboot_requested_at: Option<Timestamp>,
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
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
            store,
            host,
            cluster,
            reporter,
            state,
            last_status: String::new(),
            wake: Arc::new(Notify::new()),
            failpoint: None,
            reboot_requested_at: None,
        })
    }

    pub fn with_failpoint(mut self, failpoint: Failpoint) -> Self {
        self.failpoint = Some(failpoint);
        self
    }

    /// New settings (a configuration reload) and the ports built from them.
    /// The state, and whether a reboot was already requested in this
    /// process, carry over: a reload never repeats a step.
    pub fn reconfigure(&mut self, settings: Settings, host: H, cluster: C) {
        self.settings = settings;
        self.host = host;
        self.cluster = cluster;
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A handle that wakes the loop early (the APT hook's nudge, CLI requests).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `shutdown` resolves or a step returns an error.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        loop {
            let wait = self.tick().await?;
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

    fn status(&mut self, line: String) -> Result<(), AgentError> {
        if line != self.last_status {
            info!(message_id = msgid::STATUS, node = %self.node, state = self.state.name(), status = %line, "{line}");
            self.reporter.status(&line);
            self.store.set(
                keys::LAST_STATUS,
                &StatusRecord {
                    line: line.clone(),
                    at: Timestamp::now(),
                },
            )?;
            self.last_status = line;
        }
        Ok(())
    }

    fn event(&self, event: AgentEvent) {
        self.reporter.event(&self.node, &event);
    }

    /// Persists a transition (with its history line) and reports it.
    fn enter(&mut self, next: AgentState, detail: serde_json::Value) -> Result<(), AgentError> {
        if next == self.state {
            return Ok(());
        }
        let from = self.state.name();
        let to = next.name();
        let mut detail = detail;
        if let serde_json::Value::Object(map) = &mut detail {
            map.insert("node".into(), self.node.clone().into());
            map.insert("from".into(), from.into());
            map.insert("to".into(), to.into());
        }
        self.store.transition(&next, "state", &detail)?;
        info!(message_id = msgid::STATE_CHANGED, node = %self.node, from, to, "state {from} -> {to}");
        self.state = next;
        self.event(AgentEvent::StateChanged {
            from: from.into(),
            to: to.into(),
        });
        if let Some(fp) = &self.failpoint
            && fp(to)
        {
            return Err(AgentError::Failpoint(to));
        }
        Ok(())
    }

    fn record_gates(&self, gates: &[GateStatus]) -> Result<(), AgentError> {
        self.reporter.gates(gates);
        self.store.set(
            keys::LAST_GATES,
            &GatesRecord {
                gates: gates.to_vec(),
                at: Timestamp::now(),
            },
        )?;
        Ok(())
    }

    fn short_retry(&self) -> Duration {
        self.settings
            .reboot
            .check_interval
            .min(Duration::from_secs(30))
    }

    /// Renewal interval: well inside the lease duration.
    fn renew_every(&self) -> Duration {
        (self.settings.lease.duration / 3).max(Duration::from_millis(200))
    }

    /// One step. Errors from the world are handled here (the state says
    /// what to retry); only store failures and failpoints escape.
    pub async fn tick(&mut self) -> Result<Wait, AgentError> {
        let now = Timestamp::now();
        match self.state.clone() {
            AgentState::Idle | AgentState::Pending { .. } => self.wait_for_turn(now).await,
            AgentState::Locked { cycle } => {
                if let Some(wait) = self.keep_slot(&cycle.slot).await? {
                    return Ok(wait);
                }
                match self.cluster.node_unschedulable().await {
                    Ok(already) => {
                        let next = self.state.clone().on_prior_schedulability(already);
                        self.enter(next, serde_json::json!({"admin-cordoned": already}))?;
                        Ok(Wait::No)
                    }
                    Err(e) => self.retry_later("reading node", e),
                }
            }
            AgentState::Cordoning { cycle, .. } => {
                if let Some(wait) = self.keep_slot(&cycle.slot).await? {
                    return Ok(wait);
                }
                match self.cluster.set_unschedulable(true).await {
                    Ok(()) => {
                        let next = self.state.clone().on_cordoned(Timestamp::now());
                        self.enter(next, serde_json::json!({}))?;
                        Ok(Wait::No)
                    }
                    Err(e) => self.retry_later("cordoning", e),
                }
            }
            AgentState::Draining { cycle, cordon, .. } => self.drain(&cycle.slot, cordon).await,
            AgentState::Rebooting { cycle, boot_id, .. } => self.reboot(&cycle, &boot_id).await,
            AgentState::Verifying {
                cycle,
                booted_at,
                deadline,
                ..
            } => self.verify(&cycle.slot, booted_at, deadline).await,
            AgentState::Releasing {
                cycle,
                cordon,
                durations,
            } => {
                if cordon == Cordon::Ours
                    && let Err(e) = self.cluster.set_unschedulable(false).await
                {
                    return self.retry_later("uncordoning", e);
                }
                if let Err(e) = self.cluster.record_reboot_finished(Timestamp::now()).await {
                    return self.retry_later("recording the finished reboot", e);
                }
                match self.cluster.clear_halt().await {
                    Ok(true) => self.event(AgentEvent::HaltCleared),
                    Ok(false) => {}
                    Err(e) => return self.retry_later("clearing the fleet halt", e),
                }
                if let Err(e) = self.cluster.release(&cycle.slot).await {
                    return self.retry_later("releasing the lease", e);
                }
                crate::host::sentinel::clear_reboot_request(&self.store)?;
                self.store.append_history(
                    "reboot",
                    &serde_json::json!({
                        "node": self.node,
                        "reasons": cycle.reasons,
                        "durations": durations,
                    }),
                )?;
                self.event(AgentEvent::Verified {
                    durations: durations.clone(),
                });
                self.event(AgentEvent::Released {
                    slot: cycle.slot.clone(),
                });
                let next = self.state.clone().on_released();
                self.enter(next, serde_json::json!({"durations": durations}))?;
                Ok(Wait::No)
            }
            AgentState::Failed { step, error, .. } => self.failed(step, &error).await,
        }
    }

    fn retry_later(&mut self, action: &str, error: PortError) -> Result<Wait, AgentError> {
        warn!(message_id = msgid::STEP_FAILED, node = %self.node, state = self.state.name(), action, error = %error, "{action} failed, will retry: {error}");
        self.status(format!(
            "{}: retrying, {action} failed: {error}",
            self.state.name()
        ))?;
        Ok(Wait::For(self.short_retry()))
    }

    /// Renews the slot held by the current state. A lost slot before the
    /// node was touched sends the agent back to waiting.
    async fn keep_slot(&mut self, slot: &str) -> Result<Option<Wait>, AgentError> {
        match self.cluster.renew(slot).await {
            Ok(()) => Ok(None),
            Err(PortError::LostLease { slot, holder }) => {
                warn!(message_id = msgid::LEASE_LOST, node = %self.node, slot = %slot, holder = %holder, state = self.state.name(), "lease slot {slot} lost to {holder}");
                match self.state {
                    AgentState::Locked { .. } => {
                        let next = self.state.clone().on_released();
                        self.enter(next, serde_json::json!({"lost-lease-to": holder}))?;
                        Ok(Some(Wait::No))
                    }
                    _ => {
                        // Already cordoned: stop for a person rather than race.
                        let next = self.state.clone().on_failed(
                            Step::Release,
                            format!("lease {slot} was taken by {holder} while this node was out of service"),
                            Timestamp::now(),
                        );
                        self.enter(next, serde_json::json!({"lost-lease-to": holder}))?;
                        Ok(Some(Wait::No))
                    }
                }
            }
            Err(e) => Ok(Some(self.retry_later("renewing the lease", e)?)),
        }
    }

    async fn wait_for_turn(&mut self, now: Timestamp) -> Result<Wait, AgentError> {
        let requested = crate::host::sentinel::reboot_request(&self.store)?.map(|r| r.reason);
        let reasons = match self.host.reboot_need(requested).await {
            Ok(r) => r,
            Err(e) => return self.retry_later("checking whether a reboot is needed", e),
        };
        let since = match &self.state {
            AgentState::Pending { since, .. } => Some(*since),
            _ if reasons.is_empty() => None,
            _ => Some(now),
        };
        self.store.set(
            keys::REBOOT_NEED,
            &RebootNeedRecord {
                reasons: reasons.clone(),
                since,
                checked_at: now,
            },
        )?;
        if reasons.is_empty() {
            // Our own slot, if a crash between acquiring and persisting Locked
            // left one, is given back. Only then (Pending): an idle node
            // makes no API request at all.
            if matches!(self.state, AgentState::Pending { .. })
                && let Ok(LeaseOutlook::Mine(slot)) = self.cluster.lease_outlook().await
            {
                let _ = self.cluster.release(&slot).await;
            }
            let next = self.state.clone().on_reboot_not_needed();
            self.enter(next, serde_json::json!({}))?;
            self.status("idle: no reboot needed".into())?;
            self.event(AgentEvent::UpToDate);
            return Ok(Wait::For(self.settings.reboot.check_interval));
        }
        if matches!(self.state, AgentState::Idle) {
            self.event(AgentEvent::RebootNeeded {
                reasons: reasons.clone(),
            });
        }
        let next = self.state.clone().on_reboot_needed(reasons, now);
        self.enter(next, serde_json::json!({}))?;
        if let AgentState::Pending {
            retry_after: Some(after),
            ..
        } = self.state.clone()
            && after > now
        {
            self.status(format!(
                "waiting: last drain failed; retrying after {after}"
            ))?;
            return Ok(Wait::For(
                until(now, after).min(self.settings.reboot.check_interval),
            ));
        }

        // Cheap first: local gates need no API call.
        let local = self.cluster.local_gates(&self.store, now);
        if let Some(block) = GateStatus::first_block(&local) {
            self.record_gates(&local)?;
            self.status(format!("waiting: {}", block.reason))?;
            let wait = self
                .cluster
                .next_local_change(now)
                .map(|t| until(now, t))
                .unwrap_or(self.settings.reboot.check_interval);
            return Ok(Wait::For(wait.min(self.settings.reboot.check_interval)));
        }
        // Then the lease: only a node that could take a slot asks the cluster gates.
        let mut outlook = match self.cluster.lease_outlook().await {
            Ok(o) => o,
            Err(e) => return self.retry_later("reading the lease", e),
        };
        if outlook == LeaseOutlook::Available {
            // Every waiter woke on the same release: spread them out, and
            // look again (cheap) so those after the winner stop here.
            let jitter =
                pace::herd_jitter(self.settings.reboot.check_interval, pace::random_fraction());
            tokio::time::sleep(jitter).await;
            outlook = match self.cluster.lease_outlook().await {
                Ok(o) => o,
                Err(e) => return self.retry_later("reading the lease", e),
            };
        }
        if let LeaseOutlook::Busy { holders } = &outlook {
            self.record_gates(&local)?;
            self.status(format!("waiting: lease held by {}", holders.join(", ")))?;
            return Ok(Wait::LeaseChange(self.settings.reboot.check_interval));
        }
        let mut gates = local.clone();
        // Now, not `now`: the jitter above took some time.
        let cluster = self.cluster.cluster_gates(Timestamp::now()).await;
        gates.extend(cluster.gates);
        self.record_gates(&gates)?;
        if let Some(block) = GateStatus::first_block(&gates) {
            self.status(format!("waiting: {}", block.reason))?;
            if let LeaseOutlook::Mine(slot) = outlook {
                // A slot left from before a crash is not sat on while blocked.
                let _ = self.cluster.release(&slot).await;
            }
            return Ok(Wait::LeaseChange(
                self.after_block(Timestamp::now(), cluster.blocked_until),
            ));
        }
        let slot = match self.cluster.acquire().await {
            Ok(Some(slot)) => slot,
            Ok(None) => {
                self.status("waiting: another node took the lease first".into())?;
                return Ok(Wait::LeaseChange(self.settings.reboot.check_interval));
            }
            Err(e) => return self.retry_later("acquiring the lease", e),
        };
        // Gates again, now that we hold the slot: no one sits on it blocked.
        let mut gates = self.cluster.local_gates(&self.store, Timestamp::now());
        let cluster = self.cluster.cluster_gates(Timestamp::now()).await;
        gates.extend(cluster.gates);
        self.record_gates(&gates)?;
        if let Some(block) = GateStatus::first_block(&gates) {
            let reason = block.reason.clone();
            if let Err(e) = self.cluster.release(&slot).await {
                warn!(node = %self.node, slot = %slot, error = %e, "releasing a blocked slot failed");
            }
            self.status(format!("waiting: {reason}"))?;
            return Ok(Wait::LeaseChange(
                self.after_block(Timestamp::now(), cluster.blocked_until),
            ));
        }
        info!(message_id = msgid::LEASE_ACQUIRED, node = %self.node, slot = %slot, "lease slot {slot} acquired");
        self.event(AgentEvent::LeaseAcquired { slot: slot.clone() });
        let next = self
            .state
            .clone()
            .on_lease_acquired(slot.clone(), Timestamp::now());
        self.enter(next, serde_json::json!({"slot": slot}))?;
        self.status(format!("locked: holding {slot}"))?;
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
        if let Some(wait) = self.keep_slot(slot).await? {
            return Ok(wait);
        }
        self.status("draining".into())?;
        let (progress, mut progress_rx) = tokio::sync::watch::channel(usize::MAX);
        let renew_every = self.renew_every();
        let result = {
            let drain = self.cluster.drain(progress);
            tokio::pin!(drain);
            let mut renew = tokio::time::interval(renew_every);
            renew.tick().await;
            loop {
                tokio::select! {
                    r = &mut drain => break r,
                    _ = renew.tick() => {
                        if let Err(e) = self.cluster.renew(slot).await {
                            warn!(node = %self.node, slot, error = %e, "lease renewal during drain failed");
                        }
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
            Ok(DrainResult::Drained) => {
                let boot_id = match self.host.boot_id() {
                    Ok(b) => b,
                    Err(e) => return self.retry_later("reading boot_id", e),
                };
                let next = self
                    .state
                    .clone()
                    .on_drained(boot_id.clone(), Timestamp::now());
                self.enter(next, serde_json::json!({"boot-id": boot_id}))?;
                Ok(Wait::No)
            }
            Ok(DrainResult::TimedOut { blocking }) => {
                warn!(message_id = msgid::DRAIN_TIMED_OUT, node = %self.node, blocking = ?blocking, "drain timed out (blocking: {}); restoring the node and releasing the lease", blocking.join(", "));
                if cordon == Cordon::Ours
                    && let Err(e) = self.cluster.set_unschedulable(false).await
                {
                    return self.retry_later("uncordoning after a failed drain", e);
                }
                if let Err(e) = self.cluster.release(slot).await {
                    return self.retry_later("releasing the lease after a failed drain", e);
                }
                self.store.append_history(
                    "drain-failed",
                    &serde_json::json!({"node": self.node, "blocking": blocking}),
                )?;
                self.event(AgentEvent::DrainTimedOut {
                    blocking: blocking.clone(),
                });
                let now = Timestamp::now();
                let retry_after = self.cluster.next_local_change(now).unwrap_or(
                    now + signed(self.settings.drain.timeout.max(Duration::from_secs(1))),
                );
                let next = self.state.clone().on_drain_abandoned(retry_after);
                self.enter(next, serde_json::json!({"blocking": blocking}))?;
                Ok(Wait::No)
            }
            Err(e) => self.retry_later("draining", e),
        }
    }

    async fn reboot(
        &mut self,
        cycle: &super::state::Cycle,
        left_boot: &str,
    ) -> Result<Wait, AgentError> {
        let current = match self.host.boot_id() {
            Ok(b) => b,
            Err(e) => return self.retry_later("reading boot_id", e),
        };
        if current != left_boot {
            let booted_at = self.host.booted_at().unwrap_or_else(|e| {
                warn!(node = %self.node, error = %e, "boot time unknown; verifying from now");
                Timestamp::now()
            });
            let next = self.state.clone().on_boot_observed(
                &current,
                booted_at,
                Timestamp::now(),
                signed(self.settings.verify.timeout),
            );
            self.enter(next, serde_json::json!({"boot-id": current}))?;
            self.status("verifying: back from reboot".into())?;
            return Ok(Wait::No);
        }
        if let Some(wait) = self.keep_slot(&cycle.slot).await? {
            return Ok(wait);
        }
        if let Some(at) = self.reboot_requested_at {
            // Accepted already in this process: the machine is going down.
            self.status(format!("rebooting: requested at {at}"))?;
            return Ok(Wait::For(self.renew_every()));
        }
        let reason = cycle.reasons.join("; ");
        self.status(format!("rebooting: {reason}"))?;
        self.event(AgentEvent::Rebooting {
            reason: reason.clone(),
            boot_id: left_boot.to_string(),
        });
        // The reboot may cut the network at any moment after this call.
        self.reporter.flush().await;
        match self.host.reboot(&reason).await {
            Ok(()) => {
                info!(message_id = msgid::REBOOT_REQUESTED, node = %self.node, reason = %reason, "reboot requested from logind: {reason}");
                self.reboot_requested_at = Some(Timestamp::now());
                Ok(Wait::For(self.renew_every()))
            }
            Err(e) => {
                warn!(message_id = msgid::REBOOT_REFUSED, node = %self.node, error = %e, "reboot refused ({e}); node stays cordoned and keeps the lease");
                self.event(AgentEvent::RebootFailed {
                    error: e.to_string(),
                });
                let next =
                    self.state
                        .clone()
                        .on_failed(Step::Reboot, e.to_string(), Timestamp::now());
                self.enter(next, serde_json::json!({"error": e.to_string()}))?;
                Ok(Wait::No)
            }
        }
    }

    async fn verify(
        &mut self,
        slot: &str,
        booted_at: Timestamp,
        deadline: Timestamp,
    ) -> Result<Wait, AgentError> {
        if let Some(wait) = self.keep_slot(slot).await? {
            return Ok(wait);
        }
        let boot_id = match self.host.boot_id() {
            Ok(b) => b,
            Err(e) => return self.retry_later("reading boot_id", e),
        };
        let outcome = match self.cluster.verify_node(booted_at, &boot_id).await {
            Ok(()) => self.host.run_checks().await,
            Err(reason) => Err(reason),
        };
        let now = Timestamp::now();
        match outcome {
            Ok(()) => {
                let next = self.state.clone().on_verified(now);
                self.enter(next, serde_json::json!({}))?;
                self.status("releasing: node verified healthy".into())?;
                Ok(Wait::No)
            }
            Err(reason) if now < deadline => {
                self.status(format!("verifying: {reason}"))?;
                Ok(Wait::For(
                    Duration::from_millis(500).max(self.short_retry() / 10),
                ))
            }
            Err(reason) => {
                let why = format!("{} failed verification after reboot: {reason}", self.node);
                warn!(message_id = msgid::VERIFY_FAILED, node = %self.node, reason = %reason, "verification failed ({reason}); halting the fleet, keeping the lease and the cordon");
                match self.cluster.halt_fleet(&why).await {
                    Ok(()) => self.event(AgentEvent::Halted {
                        reason: why.clone(),
                    }),
                    Err(e) => {
                        warn!(node = %self.node, error = %e, "could not set the fleet halt; the kept lease still stops the fleet")
                    }
                }
                self.event(AgentEvent::VerifyFailed {
                    reason: reason.clone(),
                });
                let next = self
                    .state
                    .clone()
                    .on_failed(Step::Verify, reason.clone(), now);
                self.enter(next, serde_json::json!({"error": reason}))?;
                Ok(Wait::No)
            }
        }
    }

    async fn failed(&mut self, step: Step, error: &str) -> Result<Wait, AgentError> {
        if self
            .store
            .get::<serde_json::Value>(keys::RESUME_REQUESTED)?
            .is_some()
        {
            self.store.remove(keys::RESUME_REQUESTED)?;
            info!(message_id = msgid::RESUME_REQUESTED, node = %self.node, step = %step, "resume requested; retrying the failed step {step}");
            self.reboot_requested_at = None;
            let next = self
                .state
                .clone()
                .on_resume(Timestamp::now(), signed(self.settings.verify.timeout));
            self.enter(next, serde_json::json!({"resumed": step.to_string()}))?;
            return Ok(Wait::No);
        }
        if let Some(slot) = self.state.held_slot().map(str::to_string) {
            if self
                .store
                .get::<serde_json::Value>(keys::FORCE_RELEASE)?
                .is_some()
            {
                if let Err(e) = self.cluster.release(&slot).await {
                    return self.retry_later("force-releasing the lease", e);
                }
                self.store.remove(keys::FORCE_RELEASE)?;
                warn!(message_id = msgid::LEASE_FORCE_RELEASED, node = %self.node, slot = %slot, "lease slot {slot} force-released; the node stays as it is");
                let next = self.state.clone().on_released();
                self.enter(next, serde_json::json!({"force-released": slot}))?;
                return Ok(Wait::No);
            }
            // Keep the slot: the fleet stops here until a person acts.
            if let Err(e) = self.cluster.renew(&slot).await {
                warn!(node = %self.node, slot = %slot, error = %e, "renewing the kept lease failed");
            }
        } else {
            self.store.remove(keys::FORCE_RELEASE)?;
        }
        self.status(format!(
            "failed at {step}: {error}; fix it, then `drydock resume` (or `drydock release --force`)"
        ))?;
        Ok(Wait::For(self.renew_every()))
    }
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::from_millis((then.as_millisecond() - now.as_millisecond()).max(0) as u64)
}
