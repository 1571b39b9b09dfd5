//! The Kubernetes upgrade in the agent's turn: deciding it (the target, the
//! skew policy, the rollout order), planning it while holding the slot,
//! and driving [`AgentState::Upgrading`] step by step. The reboot cycle's
//! cordon, drain, reboot, verify and release serve the upgrade too.

use super::*;
use crate::upgrade::plan::{self, Decision, Facts, UpgradeStep};
use crate::upgrade::steps::{self, Outcome, Progress};

/// Reasons starting with this are the upgrade's (shown with the others).
pub(crate) const UPGRADE_REASON: &str = "Kubernetes upgrade";

pub(crate) fn is_upgrade_reason(reason: &str) -> bool {
    reason.starts_with(UPGRADE_REASON)
}

impl<H: Host, C: Cluster, R: Reporter> Agent<H, C, R> {
    /// This node's upgrade decision now. `Err`: the cluster could not be
    /// read (the caller waits: fail closed).
    pub(super) async fn upgrade_decision(&mut self) -> Result<Decision, PortError> {
        let Some(target) = self.cluster.upgrade_target().await? else {
            return Ok(Decision::NoTarget);
        };
        let versions = self.cluster.cluster_versions().await?;
        Ok(plan::decide(Some(&target), &versions, &self.node))
    }

    /// The reason to add to this turn's list, if the node should upgrade
    /// now. A refused target is reported (status, event, journal) and
    /// changes nothing.
    pub(super) async fn upgrade_reason(&mut self) -> Result<Option<String>, AgentError> {
        let decision = match self.upgrade_decision().await {
            Ok(d) => d,
            Err(e) => {
                warn!(node = %self.node, error = %e, "cannot read the Kubernetes upgrade target; not upgrading now");
                return Ok(None);
            }
        };
        match decision {
            Decision::Upgrade { from, to, .. } => Ok(Some(format!(
                "{UPGRADE_REASON} {} -> {to}",
                from.map_or("unknown".to_string(), |v| v.to_string())
            ))),
            Decision::Refused(e) => {
                let reason = e.to_string();
                if self.last_refusal.as_deref() != Some(reason.as_str()) {
                    warn!(node = %self.node, reason = %reason, "Kubernetes upgrade target refused: {reason}");
                    self.event(AgentEvent::UpgradeRefused {
                        reason: reason.clone(),
                    });
                    let detail = serde_json::json!({"node": self.node, "reason": reason});
                    self.write(move |s| s.append_history("upgrade-refused", &detail).map(|_| ()))
                        .await?;
                    self.last_refusal = Some(reason);
                }
                Ok(None)
            }
            Decision::Wait(why) => {
                info!(node = %self.node, reason = %why, "Kubernetes upgrade: not this node's turn yet");
                Ok(None)
            }
            Decision::NoTarget | Decision::UpToDate => {
                self.last_refusal = None;
                Ok(None)
            }
        }
    }

    /// In Locked, for a turn that includes an upgrade: decide `apply` or
    /// `node` now that the slot is ours, and start. `Ok(None)`: no upgrade
    /// after all (the reboot cycle goes on as before).
    pub(super) async fn plan_upgrade(&mut self, cycle: &Cycle) -> Result<Option<Wait>, AgentError> {
        if !cycle.reasons.iter().any(|r| is_upgrade_reason(r)) {
            return Ok(None);
        }
        // Read now, not the watch's value: the upgrade starts from this.
        let target = match self.cluster.upgrade_target_now().await {
            Ok(t) => t,
            Err(e) => {
                return self
                    .trouble("reading the upgrade target", e)
                    .await
                    .map(Some);
            }
        };
        let versions = match self.cluster.cluster_versions().await {
            Ok(v) => v,
            Err(e) => {
                return self
                    .trouble("reading the cluster's versions", e)
                    .await
                    .map(Some);
            }
        };
        let decision = plan::decide(target.as_deref(), &versions, &self.node);
        let Decision::Upgrade {
            from,
            to,
            control_plane,
        } = decision
        else {
            if cycle.reasons.iter().all(|r| is_upgrade_reason(r)) {
                // Nothing left to do in this turn (the target changed, or
                // it is no longer this node's turn): give the slot back and
                // wait again, rather than reboot for no reason.
                info!(node = %self.node, decision = ?decision, "upgrade no longer due; releasing the slot");
                return self
                    .give_back(cycle, "the upgrade is no longer due", Wait::No)
                    .await
                    .map(Some);
            }
            return Ok(None);
        };
        if let Err(why) = plan::control_plane_slot(
            control_plane,
            &cycle.slot,
            &self.settings.lease_slot_names(),
        ) {
            info!(node = %self.node, slot = %cycle.slot, reason = %why, "not upgrading in this slot: {why}");
            let wait = Wait::LeaseChange(self.settings.reboot.check_interval);
            return self.give_back(cycle, &why, wait).await.map(Some);
        }
        let action = plan::kubeadm_action(control_plane, to, versions.kubeadm_config);
        let reboot_needed = cycle.reasons.iter().any(|r| !is_upgrade_reason(r));
        let progress = Progress::new(from, to, action, reboot_needed);
        info!(node = %self.node, from = ?from.map(|v| v.to_string()), to = %to, action = ?action, reboot_needed, "Kubernetes upgrade planned");
        let detail =
            serde_json::json!({"to": to.to_string(), "action": action, "steps": progress.steps});
        self.transition(Event::UpgradePlanned { progress }, detail)
            .await?;
        Ok(Some(Wait::No))
    }

    /// Releases the slot of a turn that will not run, and waits again.
    async fn give_back(
        &mut self,
        cycle: &Cycle,
        why: &str,
        wait: Wait,
    ) -> Result<Wait, AgentError> {
        if let Err(e) = self.cluster.release(&cycle.slot).await {
            return self.retry_later("releasing the lease", e).await;
        }
        self.transition(
            Event::LeaseLost {
                holder: format!("nobody (released: {why})"),
                now: Timestamp::now(),
            },
            serde_json::json!({"released": cycle.slot, "upgrade-not-run": why}),
        )
        .await?;
        Ok(wait)
    }

    /// One step of [`AgentState::Upgrading`].
    pub(super) async fn upgrading(
        &mut self,
        cycle: Cycle,
        cordon: Option<Cordon>,
    ) -> Result<Wait, AgentError> {
        let Some(mut progress) = cycle.upgrade.clone() else {
            return self
                .fail_upgrade(
                    UpgradeStep::AptSource,
                    "the upgrade state has no progress record".into(),
                    None,
                )
                .await;
        };
        if let Some(wait) = self.guard_slot(true).await? {
            return Ok(wait);
        }
        let step = progress.step;
        self.status(format!(
            "upgrading: {step} ({} -> {})",
            progress.from.map_or("?".to_string(), |v| v.to_string()),
            progress.to
        ))
        .await?;
        match step {
            UpgradeStep::Drain if cordon.is_none() => match self.cluster.node_unschedulable().await
            {
                Ok(already) => {
                    self.transition(
                        Event::PriorSchedulability {
                            unschedulable: already,
                        },
                        serde_json::json!({"admin-cordoned": already, "upgrade": true}),
                    )
                    .await?;
                    Ok(Wait::No)
                }
                Err(e) => self.trouble("reading this node", e).await,
            },
            UpgradeStep::Drain => {
                // Drained already (the cordon is set): go on.
                self.progressed(progress, Outcome::AlreadyDone).await
            }
            UpgradeStep::RestartKubelet => match self.host.restart_kubelet().await {
                Ok(()) => {
                    progress.advance();
                    let p = progress.clone();
                    self.transition(
                        Event::UpgradeProgressed { progress: p },
                        serde_json::json!({"step": step.name()}),
                    )
                    .await?;
                    self.kubelet_restarted().await
                }
                Err(e) if e.is_permanent() => self.fail_upgrade(step, e.to_string(), None).await,
                Err(e) => self.retry_later("restarting the kubelet", e).await,
            },
            // Reached only after a crash right after the restart was recorded.
            UpgradeStep::Verify => self.kubelet_restarted().await,
            UpgradeStep::Reboot => {
                let boot = match self.host.boot_mark() {
                    Ok(b) => b,
                    Err(e) => return self.retry_later("reading the boot identity", e).await,
                };
                self.transition(
                    Event::UpgradeRebootNext {
                        boot_id: boot.boot_id.clone(),
                        booted_at: boot.booted_at,
                        now: Timestamp::now(),
                    },
                    serde_json::json!({"boot-id": boot.boot_id, "upgrade": true}),
                )
                .await?;
                Ok(Wait::No)
            }
            _ => self.host_step(progress).await,
        }
    }

    async fn kubelet_restarted(&mut self) -> Result<Wait, AgentError> {
        let booted_at = match self.host.booted_at() {
            Ok(b) => b,
            Err(e) => return self.retry_later("reading the boot time", e).await,
        };
        self.transition(
            Event::KubeletRestarted {
                booted_at,
                now: Timestamp::now(),
                verify_timeout: signed(self.settings.verify.timeout),
            },
            serde_json::json!({}),
        )
        .await?;
        self.status("verifying: kubelet restarted on its new version".into())
            .await?;
        Ok(Wait::No)
    }

    async fn host_step(&mut self, mut progress: Progress) -> Result<Wait, AgentError> {
        let step = progress.step;
        let mut facts = Facts::default();
        if step == UpgradeStep::KubeadmApply {
            match self.cluster.cluster_versions().await {
                Ok(v) => {
                    facts.kubeadm_config = v.kubeadm_config;
                    facts.api_server = v.api_server;
                }
                Err(e) => return self.retry_later("reading the cluster's versions", e).await,
            }
        }
        let Some(runner) = self.host.commands() else {
            return self
                .fail_upgrade(step, "this host cannot run upgrade commands".into(), None)
                .await;
        };
        let result = steps::run_step(
            runner,
            &self.settings,
            &self.store,
            &self.node,
            &mut progress,
            &facts,
        )
        .await;
        match result {
            Ok(outcome) => self.progressed(progress, outcome).await,
            Err(failure) => {
                let output = failure.output.as_ref().map(|o| {
                    serde_json::json!({"argv": o.argv, "exit-code": o.exit_code, "timed-out": o.timed_out, "stderr-tail": o.tail(20)})
                });
                self.fail_upgrade(step, failure.error, output).await
            }
        }
    }

    async fn progressed(
        &mut self,
        mut progress: Progress,
        outcome: Outcome,
    ) -> Result<Wait, AgentError> {
        let step = progress.step;
        info!(node = %self.node, step = step.name(), outcome = ?outcome, "upgrade step {step}: {outcome:?}");
        self.event(AgentEvent::UpgradeStep {
            from: progress
                .from
                .map_or("unknown".to_string(), |v| v.to_string()),
            to: progress.to.to_string(),
            step: step.name().to_string(),
        });
        progress.advance();
        self.transition(
            Event::UpgradeProgressed { progress },
            serde_json::json!({"step": step.name(), "outcome": format!("{outcome:?}")}),
        )
        .await?;
        Ok(Wait::No)
    }

    /// A failed upgrade step: halt the rollout with the reason, keep the
    /// slot and the evidence, stop for a person (`drydock resume` retries
    /// this step).
    async fn fail_upgrade(
        &mut self,
        step: UpgradeStep,
        error: String,
        output: Option<serde_json::Value>,
    ) -> Result<Wait, AgentError> {
        let reason = format!("Kubernetes upgrade step {step} failed: {error}");
        let halt = Halt {
            node: self.node.clone(),
            reason: reason.clone(),
            at: Timestamp::now(),
        };
        match self.cluster.halt_fleet(&halt).await {
            Ok(()) => self.event(AgentEvent::Halted {
                reason: format!("{} {}", halt.node, halt.reason),
            }),
            Err(e) => {
                warn!(node = %self.node, error = %e, "could not set the fleet halt; the kept lease still stops the fleet")
            }
        }
        self.event(AgentEvent::UpgradeFailed {
            step: step.name().to_string(),
            error: error.clone(),
        });
        self.fail(
            reason,
            serde_json::json!({"upgrade-step": step.name(), "error": error, "output": output}),
        )
        .await?;
        Ok(Wait::No)
    }

    /// After the kubelet restart or the reboot: the Node must report the
    /// target version.
    pub(super) async fn verify_upgrade(&mut self, cycle: &Cycle) -> Result<(), String> {
        let Some(progress) = &cycle.upgrade else {
            return Ok(());
        };
        let versions = self
            .cluster
            .cluster_versions()
            .await
            .map_err(|e| e.to_string())?;
        let mine = versions.kubelets.iter().find(|n| n.node == self.node);
        match mine.and_then(|n| n.kubelet) {
            Some(v) if v == progress.to => Ok(()),
            Some(v) => Err(format!("the kubelet reports {v}, not {}", progress.to)),
            None => Err("the Node reports no kubelet version".into()),
        }
    }
}
