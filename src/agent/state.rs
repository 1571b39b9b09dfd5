//! The agent's state: one enum whose variants carry what the next step needs,
//! persisted on every transition. Transitions are pure methods; the driver
//! does the I/O and calls them with what it found.
//!
//! Every state names a step that is safe to repeat after a crash: the step
//! first checks what is already true (boot_id changed, node cordoned, lease
//! ours) and only then acts.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Where in the cycle a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Cordon,
    Drain,
    Reboot,
    Verify,
    Release,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Cordon => "cordon",
            Step::Drain => "drain",
            Step::Reboot => "reboot",
            Step::Verify => "verify",
            Step::Release => "release",
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
    /// Reboot requested; `boot_id` is the boot we are leaving.
    Rebooting {
        cycle: Cycle,
        cordon: Cordon,
        boot_id: String,
        drained_at: Timestamp,
        drain_seconds: f64,
    },
    /// Back from the reboot (boot_id changed); checking health.
    Verifying {
        cycle: Cycle,
        cordon: Cordon,
        booted_at: Timestamp,
        deadline: Timestamp,
        drain_seconds: f64,
        reboot_seconds: f64,
    },
    /// Healthy: uncordon (if ours), record, release the slot.
    Releasing {
        cycle: Cycle,
        cordon: Cordon,
        durations: PhaseDurations,
    },
    /// Stopped for a person. The lease is kept when `slot` is set, so the
    /// fleet does not move on.
    Failed {
        step: Step,
        error: String,
        at: Timestamp,
        cycle: Option<Cycle>,
        cordon: Option<Cordon>,
        /// The boot before the failed step, when it is a reboot step.
        boot_id: Option<String>,
        drain_seconds: f64,
        reboot_seconds: f64,
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

fn seconds(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()).max(0) as f64 / 1000.0
}

impl AgentState {
    /// Short name for logs, metrics and the node annotation.
    pub fn name(&self) -> &'static str {
        match self {
            AgentState::Idle => "idle",
            AgentState::Pending { .. } => "pending",
            AgentState::Locked { .. } => "locked",
            AgentState::Cordoning { .. } => "cordoning",
            AgentState::Draining { .. } => "draining",
            AgentState::Rebooting { .. } => "rebooting",
            AgentState::Verifying { .. } => "verifying",
            AgentState::Releasing { .. } => "releasing",
            AgentState::Failed { .. } => "failed",
        }
    }

    pub const ALL_NAMES: [&'static str; 9] = [
        "idle",
        "pending",
        "locked",
        "cordoning",
        "draining",
        "rebooting",
        "verifying",
        "releasing",
        "failed",
    ];

    /// The slot this state holds, if any.
    pub fn held_slot(&self) -> Option<&str> {
        match self {
            AgentState::Locked { cycle }
            | AgentState::Cordoning { cycle, .. }
            | AgentState::Draining { cycle, .. }
            | AgentState::Rebooting { cycle, .. }
            | AgentState::Verifying { cycle, .. }
            | AgentState::Releasing { cycle, .. } => Some(&cycle.slot),
            AgentState::Failed { cycle, .. } => cycle.as_ref().map(|c| c.slot.as_str()),
            AgentState::Idle | AgentState::Pending { .. } => None,
        }
    }

    /// A reboot need was observed (or is still there).
    pub fn on_reboot_needed(self, reasons: Vec<String>, now: Timestamp) -> AgentState {
        match self {
            AgentState::Idle => AgentState::Pending {
                reasons,
                since: now,
                retry_after: None,
            },
            AgentState::Pending {
                since, retry_after, ..
            } => AgentState::Pending {
                reasons,
                since,
                retry_after,
            },
            other => other,
        }
    }

    /// The need went away before a slot was taken (e.g. sentinel removed).
    pub fn on_reboot_not_needed(self) -> AgentState {
        match self {
            AgentState::Pending { .. } => AgentState::Idle,
            other => other,
        }
    }

    pub fn on_lease_acquired(self, slot: String, now: Timestamp) -> AgentState {
        match self {
            AgentState::Pending { reasons, since, .. } => AgentState::Locked {
                cycle: Cycle {
                    reasons,
                    needed_since: since,
                    slot,
                    locked_at: now,
                },
            },
            other => other,
        }
    }

    /// The node's schedulability was read while holding the slot.
    pub fn on_prior_schedulability(self, already_unschedulable: bool) -> AgentState {
        match self {
            AgentState::Locked { cycle } => AgentState::Cordoning {
                cycle,
                cordon: if already_unschedulable {
                    Cordon::Admin
                } else {
                    Cordon::Ours
                },
            },
            other => other,
        }
    }

    pub fn on_cordoned(self, now: Timestamp) -> AgentState {
        match self {
            AgentState::Cordoning { cycle, cordon } => AgentState::Draining {
                cycle,
                cordon,
                started: now,
            },
            other => other,
        }
    }

    /// Drained; `boot_id` is the current boot, persisted before rebooting.
    pub fn on_drained(self, boot_id: String, now: Timestamp) -> AgentState {
        match self {
            AgentState::Draining {
                cycle,
                cordon,
                started,
            } => AgentState::Rebooting {
                cycle,
                cordon,
                boot_id,
                drained_at: now,
                drain_seconds: seconds(started, now),
            },
            other => other,
        }
    }

    /// The drain gave up: the node was restored and the slot released by
    /// the driver; try again later.
    pub fn on_drain_abandoned(self, retry_after: Timestamp) -> AgentState {
        match self {
            AgentState::Draining { cycle, .. } => AgentState::Pending {
                reasons: cycle.reasons,
                since: cycle.needed_since,
                retry_after: Some(retry_after),
            },
            other => other,
        }
    }

    /// The boot_id read now differs from the one we left: the reboot happened.
    pub fn on_boot_observed(
        self,
        current_boot_id: &str,
        booted_at: Timestamp,
        now: Timestamp,
        verify_timeout: SignedDuration,
    ) -> AgentState {
        match self {
            AgentState::Rebooting {
                cycle,
                cordon,
                boot_id,
                drained_at,
                drain_seconds,
            } if boot_id != current_boot_id => {
                // The reboot ends when this machine's init started, not when
                // the daemon noticed: reboot and verify must not overlap.
                // Kept within [drained_at, now] against a clock that moved.
                let up = booted_at.max(drained_at).min(now);
                AgentState::Verifying {
                    cycle,
                    cordon,
                    booted_at: up,
                    deadline: now + verify_timeout,
                    drain_seconds,
                    reboot_seconds: seconds(drained_at, up),
                }
            }
            other => other,
        }
    }

    pub fn on_verified(self, now: Timestamp) -> AgentState {
        match self {
            AgentState::Verifying {
                cycle,
                cordon,
                booted_at,
                drain_seconds,
                reboot_seconds,
                ..
            } => {
                let durations = PhaseDurations {
                    wait_seconds: seconds(cycle.needed_since, cycle.locked_at),
                    drain_seconds,
                    reboot_seconds,
                    verify_seconds: seconds(booted_at, now),
                };
                AgentState::Releasing {
                    cycle,
                    cordon,
                    durations,
                }
            }
            other => other,
        }
    }

    /// A step failed in a way a person must look at. The slot and the
    /// cordon are kept: the fleet stops here.
    pub fn on_failed(self, step: Step, error: String, now: Timestamp) -> AgentState {
        let (cycle, cordon, boot_id, drain_seconds, reboot_seconds) = match self {
            AgentState::Locked { cycle } => (Some(cycle), None, None, 0.0, 0.0),
            AgentState::Cordoning { cycle, cordon }
            | AgentState::Draining { cycle, cordon, .. } => {
                (Some(cycle), Some(cordon), None, 0.0, 0.0)
            }
            AgentState::Rebooting {
                cycle,
                cordon,
                boot_id,
                drain_seconds,
                ..
            } => (Some(cycle), Some(cordon), Some(boot_id), drain_seconds, 0.0),
            AgentState::Verifying {
                cycle,
                cordon,
                drain_seconds,
                reboot_seconds,
                ..
            } => (
                Some(cycle),
                Some(cordon),
                None,
                drain_seconds,
                reboot_seconds,
            ),
            AgentState::Releasing {
                cycle,
                cordon,
                durations,
            } => (
                Some(cycle),
                Some(cordon),
                None,
                durations.drain_seconds,
                durations.reboot_seconds,
            ),
            AgentState::Failed { .. } | AgentState::Idle | AgentState::Pending { .. } => {
                (None, None, None, 0.0, 0.0)
            }
        };
        AgentState::Failed {
            step,
            error,
            at: now,
            cycle,
            cordon,
            boot_id,
            drain_seconds,
            reboot_seconds,
        }
    }

    /// `drydock resume` on a failed node: retry the failed step.
    pub fn on_resume(self, now: Timestamp, verify_timeout: SignedDuration) -> AgentState {
        match self {
            AgentState::Failed {
                step,
                cycle: Some(cycle),
                cordon: Some(cordon),
                boot_id,
                drain_seconds,
                reboot_seconds,
                at,
                ..
            } => match step {
                Step::Verify => AgentState::Verifying {
                    cycle,
                    cordon,
                    booted_at: now,
                    deadline: now + verify_timeout,
                    drain_seconds,
                    reboot_seconds,
                },
                Step::Reboot => AgentState::Rebooting {
                    cycle,
                    cordon,
                    boot_id: boot_id.unwrap_or_default(),
                    drained_at: at,
                    drain_seconds,
                },
                Step::Cordon | Step::Drain => AgentState::Cordoning { cycle, cordon },
                Step::Release => AgentState::Releasing {
                    cycle,
                    cordon,
                    durations: PhaseDurations {
                        drain_seconds,
                        reboot_seconds,
                        ..PhaseDurations::default()
                    },
                },
            },
            AgentState::Failed {
                cycle: Some(cycle), ..
            } => AgentState::Locked { cycle },
            AgentState::Failed { .. } => AgentState::Idle,
            other => other,
        }
    }

    /// The slot is gone (released on purpose, or lost to another holder).
    pub fn on_released(self) -> AgentState {
        match self {
            AgentState::Failed {
                step,
                error,
                at,
                cordon,
                boot_id,
                drain_seconds,
                reboot_seconds,
                ..
            } => AgentState::Failed {
                step,
                error,
                at,
                cycle: None,
                cordon,
                boot_id,
                drain_seconds,
                reboot_seconds,
            },
            _ => AgentState::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn through_reboot() -> AgentState {
        AgentState::Idle
            .on_reboot_needed(vec!["kernel".into()], t(0))
            .on_lease_acquired("drydock-default-0".into(), t(10))
            .on_prior_schedulability(false)
            .on_cordoned(t(11))
            .on_drained("boot-a".into(), t(41))
    }

    #[test]
    fn happy_path_carries_the_cycle_and_durations() {
        let s = through_reboot();
        assert_eq!(s.name(), "rebooting");
        assert_eq!(s.held_slot(), Some("drydock-default-0"));
        // The same boot: still rebooting.
        let s = s.on_boot_observed("boot-a", t(45), t(50), SignedDuration::from_secs(60));
        assert_eq!(s.name(), "rebooting");
        let s = s.on_boot_observed("boot-b", t(101), t(101), SignedDuration::from_secs(60));
        let AgentState::Verifying { deadline, .. } = &s else {
            panic!("{s:?}")
        };
        assert_eq!(*deadline, t(161));
        let s = s.on_verified(t(111));
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
        assert_eq!(s.on_released(), AgentState::Idle);
    }

    #[test]
    fn admin_cordon_is_remembered() {
        let s = AgentState::Idle
            .on_reboot_needed(vec!["x".into()], t(0))
            .on_lease_acquired("s".into(), t(1))
            .on_prior_schedulability(true);
        assert!(matches!(
            s,
            AgentState::Cordoning {
                cordon: Cordon::Admin,
                ..
            }
        ));
    }

    #[test]
    fn pending_keeps_its_since_and_can_vanish() {
        let s = AgentState::Idle.on_reboot_needed(vec!["a".into()], t(0));
        let s = s.on_reboot_needed(vec!["a".into(), "b".into()], t(5));
        let AgentState::Pending { since, reasons, .. } = &s else {
            panic!()
        };
        assert_eq!((*since, reasons.len()), (t(0), 2));
        assert_eq!(s.on_reboot_not_needed(), AgentState::Idle);
        // A need seen mid-cycle does not restart the cycle.
        let r = through_reboot();
        assert_eq!(r.clone().on_reboot_needed(vec![], t(9)), r);
        assert_eq!(r.clone().on_reboot_not_needed(), r);
    }

    #[test]
    fn drain_abandoned_returns_to_pending_with_backoff() {
        let s = AgentState::Idle
            .on_reboot_needed(vec!["k".into()], t(0))
            .on_lease_acquired("s".into(), t(1))
            .on_prior_schedulability(false)
            .on_cordoned(t(2))
            .on_drain_abandoned(t(600));
        assert_eq!(
            s,
            AgentState::Pending {
                reasons: vec!["k".into()],
                since: t(0),
                retry_after: Some(t(600))
            }
        );
        assert_eq!(s.held_slot(), None);
    }

    #[test]
    fn verify_failure_keeps_slot_and_cordon_and_resume_retries() {
        let s = through_reboot()
            .on_boot_observed("boot-b", t(100), t(100), SignedDuration::from_secs(60))
            .on_failed(Step::Verify, "kubelet not Ready".into(), t(160));
        assert_eq!(s.held_slot(), Some("drydock-default-0"));
        let AgentState::Failed { cordon, .. } = &s else {
            panic!()
        };
        assert_eq!(*cordon, Some(Cordon::Ours));
        let s = s.on_resume(t(200), SignedDuration::from_secs(60));
        let AgentState::Verifying {
            deadline,
            reboot_seconds,
            ..
        } = &s
        else {
            panic!("{s:?}")
        };
        assert_eq!((*deadline, *reboot_seconds), (t(260), 59.0));
    }

    #[test]
    fn failed_reboot_resumes_with_the_old_boot_id() {
        let s = through_reboot().on_failed(Step::Reboot, "logind absent".into(), t(42));
        let s = s.on_resume(t(50), SignedDuration::from_secs(60));
        let AgentState::Rebooting { boot_id, .. } = &s else {
            panic!("{s:?}")
        };
        assert_eq!(boot_id, "boot-a");
    }

    #[test]
    fn force_release_of_a_failed_node_keeps_the_failure() {
        let s = through_reboot()
            .on_failed(Step::Reboot, "refused".into(), t(42))
            .on_released();
        assert_eq!(s.held_slot(), None);
        assert_eq!(s.name(), "failed");
        // Resuming without a slot starts over from Idle.
        assert_eq!(
            s.on_resume(t(50), SignedDuration::from_secs(1)),
            AgentState::Idle
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        for s in [
            AgentState::Idle,
            through_reboot(),
            through_reboot().on_failed(Step::Reboot, "x".into(), t(1)),
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
    fn names_cover_every_state() {
        let all = [
            AgentState::Idle,
            AgentState::Idle.on_reboot_needed(vec![], t(0)),
            through_reboot(),
        ];
        for s in all {
            assert!(AgentState::ALL_NAMES.contains(&s.name()));
        }
    }
}
