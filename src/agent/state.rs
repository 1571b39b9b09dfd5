//! The agent's state: one enum whose variants carry what the next step needs,
//! persisted on every transition. Transitions are pure: [`AgentState::apply`]
//! takes an [`Event`] (what the driver found or did) and returns the next
//! state, or an error naming both when the pair is not a legal one.
//!
//! Every state names a step that is safe to repeat after a crash: the step
//! first checks what is already true (boot changed, node cordoned, lease
//! ours) and only then acts.
//!
//! A failure keeps the state it interrupted; `drydock resume` returns to
//! exactly that state (after taking a Lease slot again when the failure
//! cost it the slot). Only a passed verification after a changed boot leads
//! to [`AgentState::Releasing`].

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// The name of a state: one vocabulary for logs, `drydock status`,
/// metrics and the node annotation.
pub(crate) use crate::phase::Phase;

/// Where in the cycle a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Cordon,
    Drain,
    Reboot,
    Verify,
    Release,
    /// A Kubernetes upgrade step (which one is in the interrupted state).
    Upgrade,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Cordon => "cordon",
            Step::Drain => "drain",
            Step::Reboot => "reboot",
            Step::Verify => "verify",
            Step::Release => "release",
            Step::Upgrade => "upgrade",
        })
    }
}

/// What the node is doing for one reboot, carried through the cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cycle {
    /// Why the reboot is needed.
    pub reasons: Vec<String>,
    /// When the need was first seen.
    pub needed_since: Timestamp,
    /// The Lease slot held for this cycle.
    pub slot: String,
    pub locked_at: Timestamp,
    /// A Kubernetes upgrade done in this turn, as far as it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<crate::upgrade::steps::Progress>,
}

/// What losing the Lease slot mid-cycle means for the node.
///
/// Before the reboot is asked for, everything done can be undone: the
/// driver uncordons (only a cordon drydock made) and the node waits again
/// like any other. From the reboot request on (and during an upgrade,
/// whose steps cannot be undone) the node stays as it is, cordoned, and
/// goes on (verify, uncordon, release) only after winning a slot again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotLoss {
    /// Undo (uncordon when `uncordon`), then wait for a slot.
    Restore { uncordon: bool },
    /// Keep the node as it is; take a slot again before the next step.
    Regain,
}

/// Whether drydock made the node unschedulable (and so may undo it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cordon {
    /// drydock cordoned it: uncordon when done.
    Ours,
    /// It was already unschedulable (an admin's cordon): leave it.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum AgentState {
    /// Nothing to do.
    Idle,
    /// A reboot is needed; waiting for gates and a Lease slot.
    Pending {
        reasons: Vec<String>,
        since: Timestamp,
        /// After a failed drain: do not try again before this.
        retry_after: Option<Timestamp>,
        /// A resumed failure whose slot was lost: once a slot is taken
        /// again, the cycle goes on from this state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Box<AgentState>>,
    },
    /// Holding a slot; the node's prior schedulability is about to be read.
    Locked { cycle: Cycle },
    /// About to cordon; the prior schedulability is recorded first so a
    /// crash between cordon and the next write cannot lose it.
    Cordoning { cycle: Cycle, cordon: Cordon },
    /// Cordoned; evicting pods.
    Draining {
        cycle: Cycle,
        cordon: Cordon,
        started: Timestamp,
    },
    /// Drained; `boot_id` (and `booted_at`) are the boot being left.
    Rebooting {
        cycle: Cycle,
        cordon: Cordon,
        boot_id: String,
        #[serde(default)]
        booted_at: Option<Timestamp>,
        drained_at: Timestamp,
        drain_seconds: f64,
        /// When the reboot was asked for. Written before asking: a reboot
        /// is requested at most once per cycle without a person.
        #[serde(default)]
        requested_at: Option<Timestamp>,
    },
    /// Back from the reboot (the boot changed); checking health.
    Verifying {
        cycle: Cycle,
        cordon: Cordon,
        booted_at: Timestamp,
        deadline: Timestamp,
        drain_seconds: f64,
        reboot_seconds: f64,
    },
    /// Verified healthy: uncordon (if ours), record, release the slot.
    Releasing {
        cycle: Cycle,
        cordon: Cordon,
        durations: PhaseDurations,
    },
    /// A Kubernetes upgrade (`cycle.upgrade`) at its current step. Before
    /// the drain `cordon` is `None`; after it, the cordon the drain made.
    Upgrading {
        cycle: Cycle,
        cordon: Option<Cordon>,
        #[serde(default)]
        drain_seconds: f64,
    },
    /// Stopped for a person. The fleet stays stopped while `slot_held`.
    Failed {
        step: Step,
        error: String,
        at: Timestamp,
        /// The state the failure interrupted, as it was: resume returns to it.
        interrupted: Box<AgentState>,
        /// The interrupted state's Lease slot is still ours (false once it
        /// was lost or force-released).
        slot_held: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct PhaseDurations {
    pub wait_seconds: f64,
    pub drain_seconds: f64,
    pub reboot_seconds: f64,
    pub verify_seconds: f64,
}

/// What the driver found or did; the input of [`AgentState::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A reboot need was observed (or is still there).
    RebootNeeded {
        reasons: Vec<String>,
        now: Timestamp,
    },
    /// No reboot is needed (any more).
    RebootNotNeeded,
    LeaseAcquired {
        slot: String,
        now: Timestamp,
    },
    /// The node's schedulability, read while holding the slot.
    PriorSchedulability {
        unschedulable: bool,
    },
    Cordoned {
        now: Timestamp,
    },
    /// Drained; the boot about to be left.
    Drained {
        boot_id: String,
        booted_at: Option<Timestamp>,
        now: Timestamp,
    },
    /// The drain gave up: the driver restored the node and released the
    /// slot; try again later.
    DrainAbandoned {
        retry_after: Timestamp,
    },
    /// About to ask for the reboot (persisted first).
    RebootRequested {
        now: Timestamp,
    },
    /// The boot changed: the reboot happened.
    BootObserved {
        booted_at: Timestamp,
        now: Timestamp,
        verify_timeout: SignedDuration,
    },
    Verified {
        now: Timestamp,
    },
    /// Uncordoned (if ours), recorded and the slot released.
    Released,
    /// A step failed in a way a person must look at; the slot and the
    /// cordon are kept.
    Failed {
        error: String,
        now: Timestamp,
    },
    /// The slot is no longer ours.
    LeaseLost {
        holder: String,
        now: Timestamp,
    },
    /// `drydock resume`, issued after the failure.
    Resume {
        now: Timestamp,
        verify_timeout: SignedDuration,
    },
    /// `drydock release --force`, issued after the failure.
    ForceReleased,
    /// Holding the slot, the node found its Kubernetes upgrade to do.
    UpgradePlanned {
        progress: crate::upgrade::steps::Progress,
    },
    /// An upgrade step finished (or was found done): the progress after it.
    UpgradeProgressed {
        progress: crate::upgrade::steps::Progress,
    },
    /// The kubelet was restarted on its new version (no reboot in this turn).
    KubeletRestarted {
        booted_at: Timestamp,
        now: Timestamp,
        verify_timeout: SignedDuration,
    },
    /// The upgrade's packages are in; the turn's reboot comes next.
    UpgradeRebootNext {
        boot_id: String,
        booted_at: Option<Timestamp>,
        now: Timestamp,
    },
}

/// The kind of an [`Event`], for errors and the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    RebootNeeded,
    RebootNotNeeded,
    LeaseAcquired,
    PriorSchedulability,
    Cordoned,
    Drained,
    DrainAbandoned,
    RebootRequested,
    BootObserved,
    Verified,
    Released,
    Failed,
    LeaseLost,
    Resume,
    ForceReleased,
    UpgradePlanned,
    UpgradeProgressed,
    KubeletRestarted,
    UpgradeRebootNext,
}

impl EventKind {
    pub const ALL: [EventKind; 19] = [
        EventKind::RebootNeeded,
        EventKind::RebootNotNeeded,
        EventKind::LeaseAcquired,
        EventKind::PriorSchedulability,
        EventKind::Cordoned,
        EventKind::Drained,
        EventKind::DrainAbandoned,
        EventKind::RebootRequested,
        EventKind::BootObserved,
        EventKind::Verified,
        EventKind::Released,
        EventKind::Failed,
        EventKind::LeaseLost,
        EventKind::Resume,
        EventKind::ForceReleased,
        EventKind::UpgradePlanned,
        EventKind::UpgradeProgressed,
        EventKind::KubeletRestarted,
        EventKind::UpgradeRebootNext,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RebootNeeded => "reboot-needed",
            EventKind::RebootNotNeeded => "reboot-not-needed",
            EventKind::LeaseAcquired => "lease-acquired",
            EventKind::PriorSchedulability => "prior-schedulability",
            EventKind::Cordoned => "cordoned",
            EventKind::Drained => "drained",
            EventKind::DrainAbandoned => "drain-abandoned",
            EventKind::RebootRequested => "reboot-requested",
            EventKind::BootObserved => "boot-observed",
            EventKind::Verified => "verified",
            EventKind::Released => "released",
            EventKind::Failed => "failed",
            EventKind::LeaseLost => "lease-lost",
            EventKind::Resume => "resume",
            EventKind::ForceReleased => "force-released",
            EventKind::UpgradePlanned => "upgrade-planned",
            EventKind::UpgradeProgressed => "upgrade-progressed",
            EventKind::KubeletRestarted => "kubelet-restarted",
            EventKind::UpgradeRebootNext => "upgrade-reboot-next",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    pub(crate) fn kind(&self) -> EventKind {
        match self {
            Event::RebootNeeded { .. } => EventKind::RebootNeeded,
            Event::RebootNotNeeded => EventKind::RebootNotNeeded,
            Event::LeaseAcquired { .. } => EventKind::LeaseAcquired,
            Event::PriorSchedulability { .. } => EventKind::PriorSchedulability,
            Event::Cordoned { .. } => EventKind::Cordoned,
            Event::Drained { .. } => EventKind::Drained,
            Event::DrainAbandoned { .. } => EventKind::DrainAbandoned,
            Event::RebootRequested { .. } => EventKind::RebootRequested,
            Event::BootObserved { .. } => EventKind::BootObserved,
            Event::Verified { .. } => EventKind::Verified,
            Event::Released => EventKind::Released,
            Event::Failed { .. } => EventKind::Failed,
            Event::LeaseLost { .. } => EventKind::LeaseLost,
            Event::Resume { .. } => EventKind::Resume,
            Event::ForceReleased => EventKind::ForceReleased,
            Event::UpgradePlanned { .. } => EventKind::UpgradePlanned,
            Event::UpgradeProgressed { .. } => EventKind::UpgradeProgressed,
            Event::KubeletRestarted { .. } => EventKind::KubeletRestarted,
            Event::UpgradeRebootNext { .. } => EventKind::UpgradeRebootNext,
        }
    }
}

/// An event that has no meaning in the current state: a bug in the driver
/// (or a corrupted record), never silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal agent transition: event {event} in state {state}{}", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
pub struct TransitionError {
    pub state: Phase,
    pub event: EventKind,
    pub detail: String,
}

fn seconds(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()).max(0) as f64 / 1000.0
}

impl AgentState {
    pub fn phase(&self) -> Phase {
        match self {
            AgentState::Idle => Phase::Idle,
            AgentState::Pending { .. } => Phase::Pending,
            AgentState::Locked { .. } => Phase::Locked,
            AgentState::Cordoning { .. } => Phase::Cordoning,
            AgentState::Draining { .. } => Phase::Draining,
            AgentState::Rebooting { .. } => Phase::Rebooting,
            AgentState::Verifying { .. } => Phase::Verifying,
            AgentState::Releasing { .. } => Phase::Releasing,
            AgentState::Failed { .. } => Phase::Failed,
            AgentState::Upgrading { .. } => Phase::Upgrading,
        }
    }

    /// Short name for logs, metrics and the node annotation.
    pub fn name(&self) -> &'static str {
        self.phase().as_str()
    }

    #[cfg(test)]
    pub(crate) const ALL_NAMES: [&'static str; 10] = [
        "idle",
        "pending",
        "locked",
        "cordoning",
        "draining",
        "rebooting",
        "verifying",
        "releasing",
        "failed",
        "upgrading",
    ];

    fn cycle(&self) -> Option<&Cycle> {
        match self {
            AgentState::Locked { cycle }
            | AgentState::Cordoning { cycle, .. }
            | AgentState::Draining { cycle, .. }
            | AgentState::Rebooting { cycle, .. }
            | AgentState::Verifying { cycle, .. }
            | AgentState::Releasing { cycle, .. }
            | AgentState::Upgrading { cycle, .. } => Some(cycle),
            AgentState::Idle | AgentState::Pending { .. } | AgentState::Failed { .. } => None,
        }
    }

    fn cycle_mut(&mut self) -> Option<&mut Cycle> {
        match self {
            AgentState::Locked { cycle }
            | AgentState::Cordoning { cycle, .. }
            | AgentState::Draining { cycle, .. }
            | AgentState::Rebooting { cycle, .. }
            | AgentState::Verifying { cycle, .. }
            | AgentState::Releasing { cycle, .. }
            | AgentState::Upgrading { cycle, .. } => Some(cycle),
            AgentState::Idle | AgentState::Pending { .. } | AgentState::Failed { .. } => None,
        }
    }

    /// The slot this state holds, if any.
    pub(crate) fn held_slot(&self) -> Option<&str> {
        match self {
            AgentState::Failed {
                interrupted,
                slot_held: true,
                ..
            } => interrupted.held_slot(),
            other => other.cycle().map(|c| c.slot.as_str()),
        }
    }

    /// Whether drydock cordoned the node in this state (or the state a
    /// failure interrupted).
    pub(crate) fn cordon(&self) -> Option<Cordon> {
        match self {
            AgentState::Cordoning { cordon, .. }
            | AgentState::Draining { cordon, .. }
            | AgentState::Rebooting { cordon, .. }
            | AgentState::Verifying { cordon, .. }
            | AgentState::Releasing { cordon, .. } => Some(*cordon),
            AgentState::Upgrading { cordon, .. } => *cordon,
            AgentState::Failed { interrupted, .. } => interrupted.cordon(),
            AgentState::Pending {
                resume: Some(s), ..
            } => s.cordon(),
            _ => None,
        }
    }

    /// What losing the Lease slot in this state asks of the driver;
    /// `None` when the state holds no slot that could be lost mid-cycle
    /// (idle, waiting, releasing, failed).
    pub(crate) fn slot_loss(&self) -> Option<SlotLoss> {
        match self {
            AgentState::Locked { .. } => Some(SlotLoss::Restore { uncordon: false }),
            AgentState::Cordoning { cordon, .. }
            | AgentState::Draining { cordon, .. }
            | AgentState::Rebooting {
                cordon,
                requested_at: None,
                ..
            } => Some(SlotLoss::Restore {
                uncordon: *cordon == Cordon::Ours,
            }),
            AgentState::Rebooting { .. }
            | AgentState::Verifying { .. }
            | AgentState::Upgrading { .. } => Some(SlotLoss::Regain),
            _ => None,
        }
    }

    /// A node waiting to win a slot back for a state that only finishes a
    /// reboot already asked for (watch the boot, verify, uncordon,
    /// release): it takes nothing more out of service, so it waits for the
    /// slot alone, not the gates, and goes first.
    pub(crate) fn finishing_only(&self) -> bool {
        match self {
            AgentState::Pending {
                resume: Some(s), ..
            } => matches!(
                s.as_ref(),
                AgentState::Verifying { .. }
                    | AgentState::Rebooting {
                        requested_at: Some(_),
                        ..
                    }
            ),
            _ => false,
        }
    }

    /// Out of service without holding a slot: waiting to win one back
    /// after losing it past the point of no return (see [`SlotLoss`]).
    pub fn out_without_slot(&self) -> bool {
        match self {
            AgentState::Pending {
                resume: Some(s), ..
            } => s.phase().out_of_service() && s.cordon() == Some(Cordon::Ours),
            _ => false,
        }
    }

    /// Where in the cycle a failure in this state happened.
    pub(crate) fn step(&self) -> Step {
        match self {
            AgentState::Idle | AgentState::Pending { .. } | AgentState::Locked { .. } => {
                Step::Cordon
            }
            AgentState::Cordoning { .. } => Step::Cordon,
            AgentState::Draining { .. } => Step::Drain,
            AgentState::Rebooting { .. } => Step::Reboot,
            AgentState::Verifying { .. } => Step::Verify,
            AgentState::Releasing { .. } => Step::Release,
            AgentState::Upgrading { .. } => Step::Upgrade,
            AgentState::Failed { step, .. } => *step,
        }
    }

    fn illegal(&self, event: EventKind, detail: &str) -> TransitionError {
        TransitionError {
            state: self.phase(),
            event,
            detail: detail.to_string(),
        }
    }

    /// The one transition function: the next state for `event`, or an
    /// error naming both when `event` has no meaning here. `self` is left
    /// as it was either way.
    pub fn apply(&self, event: Event) -> Result<AgentState, TransitionError> {
        let kind = event.kind();
        let illegal = |detail: &str| Err(self.illegal(kind, detail));
        match (self.clone(), event) {
            (AgentState::Idle, Event::RebootNeeded { reasons, now }) => Ok(AgentState::Pending {
                reasons,
                since: now,
                retry_after: None,
                resume: None,
            }),
            (AgentState::Idle, Event::RebootNotNeeded) => Ok(AgentState::Idle),

            (
                AgentState::Pending {
                    since,
                    retry_after,
                    resume,
                    ..
                },
                Event::RebootNeeded { reasons, .. },
            ) => Ok(AgentState::Pending {
                reasons,
                since,
                retry_after,
                resume,
            }),
            (AgentState::Pending { resume: None, .. }, Event::RebootNotNeeded) => {
                Ok(AgentState::Idle)
            }
            (
                AgentState::Pending {
                    resume: Some(_), ..
                },
                Event::RebootNotNeeded,
            ) => illegal("a resumed cycle ends only by a verified reboot"),
            (
                AgentState::Pending {
                    reasons,
                    since,
                    resume,
                    ..
                },
                Event::LeaseAcquired { slot, now },
            ) => match resume {
                None => Ok(AgentState::Locked {
                    cycle: Cycle {
                        reasons,
                        needed_since: since,
                        slot,
                        locked_at: now,
                        upgrade: None,
                    },
                }),
                Some(mut interrupted) => {
                    match interrupted.cycle_mut() {
                        Some(cycle) => cycle.slot = slot,
                        None => return illegal("the resumed state has no cycle"),
                    }
                    // Verification did not run while the slot was away: a
                    // fresh window, no shorter than the first.
                    if let AgentState::Verifying {
                        booted_at,
                        deadline,
                        ..
                    } = interrupted.as_mut()
                    {
                        let window = deadline.duration_since(*booted_at);
                        *deadline = (*deadline).max(now + window.max(SignedDuration::ZERO));
                    }
                    Ok(*interrupted)
                }
            },

            (AgentState::Locked { mut cycle }, Event::UpgradePlanned { progress }) => {
                cycle.upgrade = Some(progress);
                Ok(AgentState::Upgrading {
                    cycle,
                    cordon: None,
                    drain_seconds: 0.0,
                })
            }
            (
                AgentState::Upgrading {
                    mut cycle,
                    cordon,
                    drain_seconds,
                },
                Event::UpgradeProgressed { progress },
            ) if cycle.upgrade.as_ref().is_some_and(|p| progress.follows(p)) => {
                cycle.upgrade = Some(progress);
                Ok(AgentState::Upgrading {
                    cycle,
                    cordon,
                    drain_seconds,
                })
            }
            // The upgrade's drain: the reboot cycle's cordon and drain.
            (
                AgentState::Upgrading {
                    cycle,
                    cordon: None,
                    ..
                },
                Event::PriorSchedulability { unschedulable },
            ) => Ok(AgentState::Cordoning {
                cycle,
                cordon: if unschedulable {
                    Cordon::Admin
                } else {
                    Cordon::Ours
                },
            }),
            (
                AgentState::Upgrading {
                    cycle,
                    cordon: Some(cordon),
                    drain_seconds,
                },
                Event::KubeletRestarted {
                    booted_at,
                    now,
                    verify_timeout,
                },
            ) if cycle
                .upgrade
                .as_ref()
                .is_some_and(|p| p.kubelet_restart_recorded()) =>
            {
                Ok(AgentState::Verifying {
                    cycle,
                    cordon,
                    booted_at,
                    deadline: now + verify_timeout,
                    drain_seconds,
                    reboot_seconds: 0.0,
                })
            }
            (
                AgentState::Upgrading {
                    cycle,
                    cordon: Some(cordon),
                    drain_seconds,
                },
                Event::UpgradeRebootNext {
                    boot_id,
                    booted_at,
                    now,
                },
            ) if cycle.upgrade.as_ref().is_some_and(|p| p.at_reboot()) => {
                Ok(AgentState::Rebooting {
                    cycle,
                    cordon,
                    boot_id,
                    booted_at,
                    drained_at: now,
                    drain_seconds,
                    requested_at: None,
                })
            }
            (AgentState::Locked { cycle }, Event::PriorSchedulability { unschedulable }) => {
                Ok(AgentState::Cordoning {
                    cycle,
                    cordon: if unschedulable {
                        Cordon::Admin
                    } else {
                        Cordon::Ours
                    },
                })
            }
            // Nothing touched yet: back to waiting, the need kept.
            (AgentState::Locked { cycle }, Event::LeaseLost { .. }) => Ok(AgentState::Pending {
                reasons: cycle.reasons,
                since: cycle.needed_since,
                retry_after: None,
                resume: None,
            }),

            (AgentState::Cordoning { cycle, cordon }, Event::Cordoned { now }) => {
                Ok(AgentState::Draining {
                    cycle,
                    cordon,
                    started: now,
                })
            }

            (
                AgentState::Draining {
                    mut cycle,
                    cordon,
                    started,
                },
                Event::Drained { now, .. },
            ) if cycle.upgrade.is_some() => {
                if let Some(p) = cycle.upgrade.as_mut() {
                    p.advance();
                }
                Ok(AgentState::Upgrading {
                    cycle,
                    cordon: Some(cordon),
                    drain_seconds: seconds(started, now),
                })
            }
            (
                AgentState::Draining {
                    cycle,
                    cordon,
                    started,
                },
                Event::Drained {
                    boot_id,
                    booted_at,
                    now,
                },
            ) => Ok(AgentState::Rebooting {
                cycle,
                cordon,
                boot_id,
                booted_at,
                drained_at: now,
                drain_seconds: seconds(started, now),
                requested_at: None,
            }),
            (AgentState::Draining { cycle, .. }, Event::DrainAbandoned { retry_after }) => {
                Ok(AgentState::Pending {
                    reasons: cycle.reasons,
                    since: cycle.needed_since,
                    retry_after: Some(retry_after),
                    resume: None,
                })
            }

            (
                AgentState::Rebooting {
                    requested_at: None,
                    cycle,
                    cordon,
                    boot_id,
                    booted_at,
                    drained_at,
                    drain_seconds,
                },
                Event::RebootRequested { now },
            ) => Ok(AgentState::Rebooting {
                cycle,
                cordon,
                boot_id,
                booted_at,
                drained_at,
                drain_seconds,
                requested_at: Some(now),
            }),
            (AgentState::Rebooting { .. }, Event::RebootRequested { .. }) => {
                illegal("a reboot was already requested in this cycle")
            }
            (
                AgentState::Rebooting {
                    cycle,
                    cordon,
                    drained_at,
                    drain_seconds,
                    ..
                },
                Event::BootObserved {
                    booted_at,
                    now,
                    verify_timeout,
                },
            ) => {
                // The reboot ends when this machine's init started, not when
                // the daemon noticed: reboot and verify must not overlap.
                // Kept within [drained_at, now] against a clock that moved.
                let up = booted_at.max(drained_at).min(now);
                Ok(AgentState::Verifying {
                    cycle,
                    cordon,
                    booted_at: up,
                    deadline: now + verify_timeout,
                    drain_seconds,
                    reboot_seconds: seconds(drained_at, up),
                })
            }

            (
                AgentState::Verifying {
                    cycle,
                    cordon,
                    booted_at,
                    drain_seconds,
                    reboot_seconds,
                    ..
                },
                Event::Verified { now },
            ) => {
                let durations = PhaseDurations {
                    wait_seconds: seconds(cycle.needed_since, cycle.locked_at),
                    drain_seconds,
                    reboot_seconds,
                    verify_seconds: seconds(booted_at, now),
                };
                Ok(AgentState::Releasing {
                    cycle,
                    cordon,
                    durations,
                })
            }

            (AgentState::Releasing { .. }, Event::Released) => Ok(AgentState::Idle),

            // A failure or a lost slot in a step that touched the node: stop
            // for a person, keeping exactly where it was.
            (
                s @ (AgentState::Locked { .. }
                | AgentState::Cordoning { .. }
                | AgentState::Draining { .. }
                | AgentState::Rebooting { .. }
                | AgentState::Verifying { .. }
                | AgentState::Upgrading { .. }),
                Event::Failed { error, now },
            ) => Ok(AgentState::Failed {
                step: s.step(),
                error,
                at: now,
                interrupted: Box::new(s),
                slot_held: true,
            }),
            // The slot lost mid-cycle. Before the reboot was asked for, the
            // driver has undone its cordon: wait like any other node. After
            // it, the node stays as it is (cordoned, maybe rebooting) and
            // goes on only once it holds a slot again.
            (
                s @ (AgentState::Cordoning { .. }
                | AgentState::Draining { .. }
                | AgentState::Rebooting { .. }
                | AgentState::Verifying { .. }
                | AgentState::Upgrading { .. }),
                Event::LeaseLost { .. },
            ) => {
                let Some(cycle) = s.cycle() else {
                    return illegal("no cycle");
                };
                let (reasons, since) = (cycle.reasons.clone(), cycle.needed_since);
                let resume = match s.slot_loss() {
                    Some(SlotLoss::Restore { .. }) => None,
                    _ => Some(Box::new(s)),
                };
                Ok(AgentState::Pending {
                    reasons,
                    since,
                    retry_after: None,
                    resume,
                })
            }

            (
                AgentState::Failed {
                    interrupted,
                    slot_held,
                    ..
                },
                Event::Resume {
                    now,
                    verify_timeout,
                },
            ) => {
                let back = interrupted.resumed(now, verify_timeout);
                if slot_held {
                    Ok(back)
                } else {
                    // The slot is gone: take one again (gates and all) first.
                    let (reasons, since) = back
                        .cycle()
                        .map(|c| (c.reasons.clone(), c.needed_since))
                        .unwrap_or((Vec::new(), now));
                    Ok(AgentState::Pending {
                        reasons,
                        since,
                        retry_after: None,
                        resume: Some(Box::new(back)),
                    })
                }
            }
            (
                AgentState::Failed {
                    step,
                    error,
                    at,
                    interrupted,
                    slot_held: true,
                },
                Event::ForceReleased | Event::LeaseLost { .. },
            ) => Ok(AgentState::Failed {
                step,
                error,
                at,
                interrupted,
                slot_held: false,
            }),
            (
                AgentState::Failed {
                    slot_held: false, ..
                },
                Event::ForceReleased,
            ) => illegal("no slot is held"),

            (_, _) => illegal(""),
        }
    }

    /// The state a resume returns to: the interrupted one, with what must
    /// be redone made so.
    fn resumed(self, now: Timestamp, verify_timeout: SignedDuration) -> AgentState {
        match self {
            // A person said go: the reboot may be asked for again.
            AgentState::Rebooting {
                cycle,
                cordon,
                boot_id,
                booted_at,
                drained_at,
                drain_seconds,
                ..
            } => AgentState::Rebooting {
                cycle,
                cordon,
                boot_id,
                booted_at,
                drained_at,
                drain_seconds,
                requested_at: None,
            },
            AgentState::Verifying {
                cycle,
                cordon,
                booted_at,
                drain_seconds,
                reboot_seconds,
                ..
            } => AgentState::Verifying {
                cycle,
                cordon,
                booted_at,
                deadline: now + verify_timeout,
                drain_seconds,
                reboot_seconds,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    const VT: SignedDuration = SignedDuration::from_secs(60);

    fn go(s: AgentState, e: Event) -> AgentState {
        s.apply(e).unwrap()
    }

    fn through_reboot() -> AgentState {
        let s = cordoning(false);
        let s = go(s, Event::Cordoned { now: t(11) });
        go(
            s,
            Event::Drained {
                boot_id: "boot-a".into(),
                booted_at: Some(t(-100)),
                now: t(41),
            },
        )
    }

    fn booted(s: AgentState, at: i64) -> AgentState {
        go(
            s,
            Event::BootObserved {
                booted_at: t(at),
                now: t(at),
                verify_timeout: VT,
            },
        )
    }

    #[test]
    fn happy_path_carries_the_cycle_and_durations() {
        let s = through_reboot();
        assert_eq!(s.phase(), Phase::Rebooting);
        assert_eq!(s.held_slot(), Some("drydock-default-0"));
        let s = go(s, Event::RebootRequested { now: t(42) });
        let s = booted(s, 101);
        let AgentState::Verifying { deadline, .. } = &s else {
            panic!("{s:?}")
        };
        assert_eq!(*deadline, t(161));
        let s = go(s, Event::Verified { now: t(111) });
        let AgentState::Releasing {
            cordon, durations, ..
        } = &s
        else {
            panic!("{s:?}")
        };
        assert_eq!(*cordon, Cordon::Ours);
        assert_eq!(
            *durations,
            PhaseDurations {
                wait_seconds: 10.0,
                drain_seconds: 30.0,
                reboot_seconds: 60.0,
                verify_seconds: 10.0
            }
        );
        assert_eq!(go(s, Event::Released), AgentState::Idle);
    }

    #[test]
    fn a_reboot_is_requested_once_per_cycle() {
        let s = go(through_reboot(), Event::RebootRequested { now: t(42) });
        let e = s.apply(Event::RebootRequested { now: t(43) }).unwrap_err();
        assert_eq!(
            (e.state, e.event),
            (Phase::Rebooting, EventKind::RebootRequested)
        );
        assert!(e.to_string().contains("already requested"), "{e}");
        // A person's resume allows one more.
        let failed = go(
            s,
            Event::Failed {
                error: "the boot did not change".into(),
                now: t(50),
            },
        );
        let back = go(
            failed,
            Event::Resume {
                now: t(60),
                verify_timeout: VT,
            },
        );
        assert!(matches!(
            back,
            AgentState::Rebooting {
                requested_at: None,
                ..
            }
        ));
    }

    /// Holding a slot, the prior schedulability read.
    fn cordoning(unschedulable: bool) -> AgentState {
        let s = go(
            AgentState::Idle,
            Event::RebootNeeded {
                reasons: vec!["kernel".into()],
                now: t(0),
            },
        );
        let s = go(
            s,
            Event::LeaseAcquired {
                slot: "drydock-default-0".into(),
                now: t(10),
            },
        );
        go(s, Event::PriorSchedulability { unschedulable })
    }

    fn lost(s: &AgentState) -> AgentState {
        go(
            s.clone(),
            Event::LeaseLost {
                holder: "n2".into(),
                now: t(200),
            },
        )
    }

    #[test]
    fn admin_cordon_is_remembered_and_never_undone_on_a_lost_slot() {
        let s = cordoning(true);
        assert_eq!(s.cordon(), Some(Cordon::Admin));
        assert_eq!(s.slot_loss(), Some(SlotLoss::Restore { uncordon: false }));
        let s = go(s, Event::Cordoned { now: t(11) });
        assert_eq!(s.slot_loss(), Some(SlotLoss::Restore { uncordon: false }));
        assert_eq!(
            cordoning(false).slot_loss(),
            Some(SlotLoss::Restore { uncordon: true })
        );
    }

    #[test]
    fn a_slot_lost_after_the_reboot_request_is_won_back_before_going_on() {
        let requested = go(through_reboot(), Event::RebootRequested { now: t(42) });
        for (name, state) in [
            ("rebooting", requested),
            ("verifying", booted(through_reboot(), 100)),
        ] {
            assert_eq!(state.slot_loss(), Some(SlotLoss::Regain), "{name}");
            let waiting = lost(&state);
            assert_eq!(waiting.phase(), Phase::Pending, "{name}");
            assert_eq!(waiting.held_slot(), None, "{name}");
            assert_eq!(waiting.cordon(), Some(Cordon::Ours), "{name}: kept");
            assert!(waiting.out_without_slot(), "{name}");
            assert!(waiting.finishing_only(), "{name}");
            // Nothing goes on without a slot: no verification, no release,
            // and the need check cannot end it.
            for e in [
                Event::Verified { now: t(201) },
                Event::Released,
                Event::RebootNotNeeded,
                Event::BootObserved {
                    booted_at: t(150),
                    now: t(201),
                    verify_timeout: VT,
                },
            ] {
                assert!(waiting.apply(e).is_err(), "{name}");
            }
            let back = go(
                waiting,
                Event::LeaseAcquired {
                    slot: "drydock-default-1".into(),
                    now: t(1000),
                },
            );
            assert_eq!(back.name(), name);
            assert_eq!(back.held_slot(), Some("drydock-default-1"));
            if let AgentState::Verifying { deadline, .. } = back {
                // A fresh window (first: 100 -> 160), not one already over.
                assert_eq!(deadline, t(1060), "{name}");
            }
        }
    }

    #[test]
    fn drain_abandoned_returns_to_pending_with_backoff() {
        let s = through_reboot();
        let AgentState::Rebooting { cycle, cordon, .. } = s else {
            unreachable!()
        };
        let s = go(
            AgentState::Draining {
                cycle,
                cordon,
                started: t(2),
            },
            Event::DrainAbandoned {
                retry_after: t(600),
            },
        );
        assert_eq!(
            s,
            AgentState::Pending {
                reasons: vec!["kernel".into()],
                since: t(0),
                retry_after: Some(t(600)),
                resume: None,
            }
        );
        assert_eq!(s.held_slot(), None);
    }

    #[test]
    fn verify_failure_keeps_slot_and_cordon_and_resume_retries() {
        let s = go(
            booted(through_reboot(), 100),
            Event::Failed {
                error: "kubelet not Ready".into(),
                now: t(160),
            },
        );
        assert_eq!(s.held_slot(), Some("drydock-default-0"));
        assert_eq!(s.cordon(), Some(Cordon::Ours));
        assert_eq!(s.step(), Step::Verify);
        let s = go(
            s,
            Event::Resume {
                now: t(200),
                verify_timeout: VT,
            },
        );
        let AgentState::Verifying {
            deadline,
            booted_at,
            ..
        } = &s
        else {
            panic!("{s:?}")
        };
        assert_eq!((*deadline, *booted_at), (t(260), t(100)));
    }

    #[test]
    fn force_release_of_a_failed_node_keeps_the_failure() {
        let s = go(
            through_reboot(),
            Event::Failed {
                error: "refused".into(),
                now: t(42),
            },
        );
        let s = go(s, Event::ForceReleased);
        assert_eq!(s.held_slot(), None);
        assert_eq!(s.phase(), Phase::Failed);
        assert!(s.apply(Event::ForceReleased).is_err());
        // Resuming without a slot waits for one, then reboots.
        let s = go(
            s,
            Event::Resume {
                now: t(50),
                verify_timeout: VT,
            },
        );
        assert!(matches!(
            s,
            AgentState::Pending {
                resume: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn illegal_pairs_name_both_and_change_nothing() {
        let s = AgentState::Idle;
        let e = s.apply(Event::Verified { now: t(0) }).unwrap_err();
        assert_eq!(
            e.to_string(),
            "illegal agent transition: event verified in state idle"
        );
        assert_eq!(s, AgentState::Idle);
    }

    #[test]
    fn state_round_trips_through_json() {
        for s in [
            AgentState::Idle,
            through_reboot(),
            go(
                through_reboot(),
                Event::Failed {
                    error: "x".into(),
                    now: t(1),
                },
            ),
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<AgentState>(&json).unwrap(), s);
        }
        assert!(
            serde_json::to_string(&AgentState::Idle)
                .unwrap()
                .contains("\"state\":\"idle\"")
        );
    }

    #[test]
    fn every_state_name_is_a_phase() {
        for (_, s) in samples() {
            assert_eq!(s.name().parse::<Phase>().unwrap(), s.phase());
        }
        for name in AgentState::ALL_NAMES {
            assert!(name.parse::<Phase>().is_ok());
        }
    }

    /// One state of each phase (and each variant that changes the answer).
    pub(crate) fn samples() -> Vec<(&'static str, AgentState)> {
        let rebooting = through_reboot();
        let requested = go(rebooting.clone(), Event::RebootRequested { now: t(42) });
        let AgentState::Rebooting { cycle, cordon, .. } = rebooting.clone() else {
            unreachable!()
        };
        let draining = AgentState::Draining {
            cycle: cycle.clone(),
            cordon,
            started: t(11),
        };
        let verifying = booted(through_reboot(), 100);
        let releasing = go(verifying.clone(), Event::Verified { now: t(110) });
        let failed = go(
            verifying.clone(),
            Event::Failed {
                error: "x".into(),
                now: t(120),
            },
        );
        let failed_unheld = go(failed.clone(), Event::ForceReleased);
        vec![
            ("idle", AgentState::Idle),
            (
                "pending",
                go(
                    AgentState::Idle,
                    Event::RebootNeeded {
                        reasons: vec!["k".into()],
                        now: t(0),
                    },
                ),
            ),
            (
                "pending-resume",
                go(
                    failed_unheld.clone(),
                    Event::Resume {
                        now: t(130),
                        verify_timeout: VT,
                    },
                ),
            ),
            ("pending-regain", lost(&verifying)),
            (
                "locked",
                AgentState::Locked {
                    cycle: cycle.clone(),
                },
            ),
            (
                "cordoning",
                AgentState::Cordoning {
                    cycle: cycle.clone(),
                    cordon,
                },
            ),
            ("draining", draining),
            ("rebooting", rebooting),
            ("rebooting-requested", requested),
            ("verifying", verifying),
            ("releasing", releasing),
            ("failed", failed),
            ("failed-unheld", failed_unheld),
        ]
    }

    /// One event of each kind.
    pub(crate) fn events() -> Vec<Event> {
        let ev = |k: EventKind| match k {
            EventKind::RebootNeeded => Event::RebootNeeded {
                reasons: vec!["k".into()],
                now: t(500),
            },
            EventKind::RebootNotNeeded => Event::RebootNotNeeded,
            EventKind::LeaseAcquired => Event::LeaseAcquired {
                slot: "drydock-default-0".into(),
                now: t(500),
            },
            EventKind::PriorSchedulability => Event::PriorSchedulability {
                unschedulable: false,
            },
            EventKind::Cordoned => Event::Cordoned { now: t(500) },
            EventKind::Drained => Event::Drained {
                boot_id: "b".into(),
                booted_at: None,
                now: t(500),
            },
            EventKind::DrainAbandoned => Event::DrainAbandoned {
                retry_after: t(900),
            },
            EventKind::RebootRequested => Event::RebootRequested { now: t(500) },
            EventKind::BootObserved => Event::BootObserved {
                booted_at: t(500),
                now: t(500),
                verify_timeout: VT,
            },
            EventKind::Verified => Event::Verified { now: t(500) },
            EventKind::Released => Event::Released,
            EventKind::Failed => Event::Failed {
                error: "e".into(),
                now: t(500),
            },
            EventKind::LeaseLost => Event::LeaseLost {
                holder: "n2".into(),
                now: t(500),
            },
            EventKind::Resume => Event::Resume {
                now: t(500),
                verify_timeout: VT,
            },
            EventKind::ForceReleased => Event::ForceReleased,
            EventKind::UpgradePlanned | EventKind::UpgradeProgressed => {
                let progress = crate::upgrade::steps::Progress::new(
                    Some(crate::upgrade::KubeVersion::new(1, 34, 2)),
                    crate::upgrade::KubeVersion::new(1, 35, 2),
                    crate::upgrade::KubeadmAction::Node,
                    false,
                );
                if k == EventKind::UpgradePlanned {
                    Event::UpgradePlanned { progress }
                } else {
                    Event::UpgradeProgressed { progress }
                }
            }
            EventKind::KubeletRestarted => Event::KubeletRestarted {
                booted_at: t(500),
                now: t(500),
                verify_timeout: VT,
            },
            EventKind::UpgradeRebootNext => Event::UpgradeRebootNext {
                boot_id: "b".into(),
                booted_at: None,
                now: t(500),
            },
        };
        EventKind::ALL.into_iter().map(ev).collect()
    }

    /// What a lost slot does to each sample (when it may happen at all).
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum OnLoss {
        /// Not an event this state takes.
        Illegal,
        /// Undone (uncordoned when `true`), then waiting like any node.
        Wait { uncordon: bool },
        /// Kept as it is; waits to win a slot back for this very state.
        Regain,
        /// Stays failed, the slot no longer counted as held.
        StaysFailed,
    }

    /// The one table of the machine: for each sample state, the events it
    /// takes and what losing its slot does; every (state, event) pair is
    /// walked against it.
    #[test]
    fn every_state_event_pair_is_legal_or_a_loud_error() {
        use EventKind as K;
        use OnLoss::*;
        let table: &[(&str, &[K], OnLoss)] = &[
            ("idle", &[K::RebootNeeded, K::RebootNotNeeded], Illegal),
            (
                "pending",
                &[K::RebootNeeded, K::RebootNotNeeded, K::LeaseAcquired],
                Illegal,
            ),
            (
                "pending-resume",
                &[K::RebootNeeded, K::LeaseAcquired],
                Illegal,
            ),
            (
                "pending-regain",
                &[K::RebootNeeded, K::LeaseAcquired],
                Illegal,
            ),
            (
                "locked",
                &[
                    K::PriorSchedulability,
                    K::LeaseLost,
                    K::Failed,
                    K::UpgradePlanned,
                ],
                Wait { uncordon: false },
            ),
            (
                "cordoning",
                &[K::Cordoned, K::LeaseLost, K::Failed],
                Wait { uncordon: true },
            ),
            (
                "draining",
                &[K::Drained, K::DrainAbandoned, K::LeaseLost, K::Failed],
                Wait { uncordon: true },
            ),
            (
                "rebooting",
                &[K::RebootRequested, K::BootObserved, K::LeaseLost, K::Failed],
                Wait { uncordon: true },
            ),
            (
                "rebooting-requested",
                &[K::BootObserved, K::LeaseLost, K::Failed],
                Regain,
            ),
            ("verifying", &[K::Verified, K::LeaseLost, K::Failed], Regain),
            ("releasing", &[K::Released], Illegal),
            (
                "failed",
                &[K::Resume, K::ForceReleased, K::LeaseLost],
                StaysFailed,
            ),
            ("failed-unheld", &[K::Resume], Illegal),
        ];
        let samples = samples();
        assert_eq!(samples.len(), table.len());
        let mut pairs = 0;
        for ((name, state), (tname, allowed, on_loss)) in samples.iter().zip(table) {
            assert_eq!(name, tname);
            for event in events() {
                pairs += 1;
                let kind = event.kind();
                let before = state.clone();
                match state.apply(event) {
                    Ok(_) => assert!(
                        allowed.contains(&kind),
                        "{name} took {kind}, which it must refuse"
                    ),
                    Err(e) => {
                        assert!(!allowed.contains(&kind), "{name} refused {kind}: {e}");
                        let text = e.to_string();
                        assert!(
                            text.contains(kind.as_str()) && text.contains(state.name()),
                            "{text}"
                        );
                        assert_eq!((e.state, e.event), (state.phase(), kind));
                    }
                }
                assert_eq!(*state, before, "apply never changes the state it is given");
            }
            // A lost slot, as the table says.
            let after = state.apply(Event::LeaseLost {
                holder: "n2".into(),
                now: t(500),
            });
            let found = match (&after, state.slot_loss()) {
                (Err(_), None) => Illegal,
                (
                    Ok(AgentState::Failed {
                        slot_held: false, ..
                    }),
                    None,
                ) => StaysFailed,
                (
                    Ok(AgentState::Pending { resume: None, .. }),
                    Some(SlotLoss::Restore { uncordon }),
                ) => Wait { uncordon },
                (
                    Ok(AgentState::Pending {
                        resume: Some(r), ..
                    }),
                    Some(SlotLoss::Regain),
                ) if **r == *state => Regain,
                other => panic!("{name}: lost slot gave {other:?}"),
            };
            assert_eq!(found, *on_loss, "{name}");
            if let Ok(after) = after {
                assert_eq!(after.held_slot(), None, "{name}: the lost slot is not held");
            }
        }
        assert_eq!(pairs, table.len() * EventKind::ALL.len());
    }
}
