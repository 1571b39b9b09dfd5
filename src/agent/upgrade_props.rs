//! Random event sequences through the state machine with the Kubernetes
//! upgrade's events among them, driven as the driver drives them (the
//! plan from the pure rollout rules, each step's progress advanced from
//! the persisted one) and mixed with everything the world throws at a
//! node (failures, lost slots, resumes, stray events). Checked after every
//! event: a kubeadm step recorded done is never lost nor run again, one
//! `kubeadm upgrade apply` in the whole history, never released (and so
//! never uncordoned) without a passed verification after the new kubelet
//! is in, an admin's cordon is never taken for drydock's, the record
//! survives a round trip.

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::state::{AgentState, Cordon, Cycle, Event, EventKind, Phase};
use crate::upgrade::plan::{self, UpgradeStep};
use crate::upgrade::steps::Progress;
use crate::upgrade::{KubeVersion, KubeadmAction};

const FROM: KubeVersion = KubeVersion::new(1, 34, 2);
const TO: KubeVersion = KubeVersion::new(1, 35, 2);

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// What the driver (or the world) does next; turned into an [`Event`]
/// against the current state, as the driver builds its events.
#[derive(Debug, Clone)]
enum Action {
    /// What the driver does next in this state (so that sequences get
    /// deep into the upgrade, with the other actions as noise).
    Drive,
    Need {
        upgrade: bool,
    },
    NotNeeded,
    Acquire(u8),
    /// Holding the slot: plan the upgrade (the control-plane role and
    /// whether a reboot is also due are the node's).
    Plan {
        control_plane: bool,
        reboot: bool,
    },
    /// The current step finished: its progress, advanced.
    Step,
    /// A stale or foreign progress record (never from the driver).
    StrayProgress {
        skip: usize,
    },
    Prior(bool),
    Cordoned,
    Drained(u8),
    DrainAbandoned,
    KubeletRestarted,
    UpgradeRebootNext,
    RebootRequested,
    BootObserved,
    Verified,
    Released,
    Failed,
    LeaseLost,
    Resume,
    ForceReleased,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        1 => any::<bool>().prop_map(|upgrade| Action::Need { upgrade }),
        1 => Just(Action::NotNeeded),
        1 => (0u8..2).prop_map(Action::Acquire),
        1 => (any::<bool>(), any::<bool>())
            .prop_map(|(control_plane, reboot)| Action::Plan { control_plane, reboot }),
        // The driver's own moves are the common case.
        10 => Just(Action::Drive),
        3 => Just(Action::Step),
        1 => (0usize..12).prop_map(|skip| Action::StrayProgress { skip }),
        1 => any::<bool>().prop_map(Action::Prior),
        1 => Just(Action::Cordoned),
        1 => (0u8..3).prop_map(Action::Drained),
        1 => Just(Action::DrainAbandoned),
        1 => Just(Action::KubeletRestarted),
        1 => Just(Action::UpgradeRebootNext),
        1 => Just(Action::RebootRequested),
        1 => Just(Action::BootObserved),
        2 => Just(Action::Verified),
        1 => Just(Action::Released),
        1 => Just(Action::Failed),
        1 => Just(Action::LeaseLost),
        2 => Just(Action::Resume),
        1 => Just(Action::ForceReleased),
    ]
}

/// The cycle a state carries (inside a failure or a resumable wait too).
fn cycle(s: &AgentState) -> Option<&Cycle> {
    match s {
        AgentState::Idle => None,
        AgentState::Pending { resume, .. } => resume.as_deref().and_then(cycle),
        AgentState::Locked { cycle }
        | AgentState::Cordoning { cycle, .. }
        | AgentState::Draining { cycle, .. }
        | AgentState::Rebooting { cycle, .. }
        | AgentState::Verifying { cycle, .. }
        | AgentState::Releasing { cycle, .. }
        | AgentState::Upgrading { cycle, .. } => Some(cycle),
        AgentState::Failed { interrupted, .. } => cycle(interrupted),
    }
}

fn progress(s: &AgentState) -> Option<&Progress> {
    cycle(s).and_then(|c| c.upgrade.as_ref())
}

fn cordon(s: &AgentState) -> Option<Cordon> {
    match s {
        AgentState::Cordoning { cordon, .. }
        | AgentState::Draining { cordon, .. }
        | AgentState::Rebooting { cordon, .. }
        | AgentState::Verifying { cordon, .. }
        | AgentState::Releasing { cordon, .. } => Some(*cordon),
        AgentState::Upgrading { cordon, .. } => *cordon,
        AgentState::Failed { interrupted, .. } => cordon(interrupted),
        AgentState::Pending { resume, .. } => resume.as_deref().and_then(cordon),
        AgentState::Idle | AgentState::Locked { .. } => None,
    }
}

/// The cluster as far as the upgrade changes it.
#[derive(Debug)]
struct World {
    /// kube-system/kubeadm-config's kubernetesVersion.
    kubeadm_config: KubeVersion,
    /// `kubeadm upgrade apply` runs over the whole history.
    applies: u32,
}

/// The driver's next move in `state` (a control-plane node with an
/// upgrade due, sometimes a reboot too).
fn drive(state: &AgentState, reboot: bool) -> Action {
    match state {
        AgentState::Idle => Action::Need { upgrade: true },
        AgentState::Pending { .. } => Action::Acquire(0),
        AgentState::Locked { cycle } if cycle.upgrade.is_none() => Action::Plan {
            control_plane: true,
            reboot,
        },
        AgentState::Locked { .. } => Action::Prior(false),
        AgentState::Upgrading { cycle, cordon, .. } => {
            match (cycle.upgrade.as_ref().map(|p| p.step), cordon) {
                (Some(UpgradeStep::Drain), None) => Action::Prior(false),
                (Some(UpgradeStep::Verify), Some(_)) => Action::KubeletRestarted,
                (Some(UpgradeStep::Reboot), Some(_)) => Action::UpgradeRebootNext,
                _ => Action::Step,
            }
        }
        AgentState::Cordoning { .. } => Action::Cordoned,
        AgentState::Draining { .. } => Action::Drained(0),
        AgentState::Rebooting {
            requested_at: None, ..
        } => Action::RebootRequested,
        AgentState::Rebooting { .. } => Action::BootObserved,
        AgentState::Verifying { .. } => Action::Verified,
        AgentState::Releasing { .. } => Action::Released,
        AgentState::Failed { .. } => Action::Resume,
    }
}

fn event_for(a: &Action, state: &AgentState, world: &World, now: Timestamp) -> Event {
    let vt = SignedDuration::from_secs(60);
    let a = match a {
        Action::Drive => drive(state, now.as_second() % 2 == 0),
        other => other.clone(),
    };
    match a {
        Action::Drive => unreachable!("resolved above"),
        Action::Need { upgrade } => Event::RebootNeeded {
            reasons: vec![if upgrade {
                format!("{} {FROM} -> {TO}", super::driver::UPGRADE_REASON)
            } else {
                "kernel".into()
            }],
            now,
        },
        Action::NotNeeded => Event::RebootNotNeeded,
        Action::Acquire(n) => Event::LeaseAcquired {
            slot: format!("drydock-default-{n}"),
            now,
        },
        Action::Plan {
            control_plane,
            reboot,
        } => {
            // As the driver plans: apply only while kubeadm-config is behind.
            let action = plan::kubeadm_action(control_plane, TO, Some(world.kubeadm_config));
            Event::UpgradePlanned {
                progress: Progress::new(Some(FROM), TO, action, reboot),
            }
        }
        Action::Step => match progress(state) {
            Some(p) => {
                let mut p = p.clone();
                p.advance();
                Event::UpgradeProgressed { progress: p }
            }
            None => Event::UpgradeProgressed {
                progress: Progress::new(Some(FROM), TO, KubeadmAction::Node, false),
            },
        },
        Action::StrayProgress { skip } => {
            let mut p = Progress::new(Some(FROM), TO, KubeadmAction::Apply, false);
            for _ in 0..skip {
                p.advance();
            }
            Event::UpgradeProgressed { progress: p }
        }
        Action::Prior(u) => Event::PriorSchedulability { unschedulable: u },
        Action::Cordoned => Event::Cordoned { now },
        Action::Drained(b) => Event::Drained {
            boot_id: format!("boot-{b}"),
            booted_at: None,
            now,
        },
        Action::DrainAbandoned => Event::DrainAbandoned { retry_after: now },
        Action::KubeletRestarted => Event::KubeletRestarted {
            booted_at: now,
            now,
            verify_timeout: vt,
        },
        Action::UpgradeRebootNext => Event::UpgradeRebootNext {
            boot_id: "boot-0".into(),
            booted_at: None,
            now,
        },
        Action::RebootRequested => Event::RebootRequested { now },
        Action::BootObserved => Event::BootObserved {
            booted_at: now,
            now,
            verify_timeout: vt,
        },
        Action::Verified => Event::Verified { now },
        Action::Released => Event::Released,
        Action::Failed => Event::Failed {
            error: "broken".into(),
            now,
        },
        Action::LeaseLost => Event::LeaseLost {
            holder: "n2".into(),
            now,
        },
        Action::Resume => Event::Resume {
            now,
            verify_timeout: vt,
        },
        Action::ForceReleased => Event::ForceReleased,
    }
}

/// Whether the new kubelet is in: installed, then restarted (recorded
/// done) or the turn's reboot reached (the reboot itself is proven by the
/// boot change, not recorded as a step).
fn kubelet_in(p: &Progress) -> bool {
    p.is_done(UpgradeStep::InstallKubelet)
        && (p.is_done(UpgradeStep::RestartKubelet)
            || p.is_done(UpgradeStep::Reboot)
            || p.step == UpgradeStep::Reboot)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn upgrade_invariants_hold_for_any_event_sequence(
        actions in prop::collection::vec(action(), 0..120)
    ) {
        let mut state = AgentState::Idle;
        let mut world = World { kubeadm_config: FROM, applies: 0 };
        // The kubeadm steps completed under the current plan.
        let mut kubeadm_done: Vec<UpgradeStep> = Vec::new();
        for (i, a) in actions.iter().enumerate() {
            let event = event_for(a, &state, &world, t(i as i64));
            let kind = event.kind();
            let before = state.clone();
            let next = match state.apply(event) {
                Ok(n) => n,
                Err(e) => {
                    prop_assert_eq!(e.state, before.phase());
                    prop_assert_eq!(e.event, kind);
                    continue;
                }
            };
            if kind == EventKind::UpgradePlanned {
                prop_assert!(progress(&before).is_none(), "planned over an upgrade: {:?}", before);
                kubeadm_done.clear();
            }
            // A recorded step is never lost while the turn lives, and a
            // kubeadm step is completed once per plan; `apply` once ever.
            if let (Some(p0), Some(p1)) = (progress(&before), progress(&next)) {
                for s in &p0.done {
                    prop_assert!(p1.done.contains(s), "{} lost: {:?} -> {:?}", s, p0, p1);
                }
                for s in p1.done.iter().filter(|s| s.is_kubeadm() && !p0.done.contains(s)) {
                    prop_assert!(!kubeadm_done.contains(s), "{} run twice", s);
                    kubeadm_done.push(*s);
                    if *s == UpgradeStep::KubeadmApply {
                        world.applies += 1;
                        world.kubeadm_config = TO;
                    }
                }
                // Never back to a kubeadm step already done.
                prop_assert!(
                    !(p1.step.is_kubeadm() && p0.done.contains(&p1.step)),
                    "back to a finished kubeadm step: {:?}", p1
                );
            }
            prop_assert!(world.applies <= 1, "a second kubeadm upgrade apply");
            // Released (and so uncordoned) only through a passed
            // verification, and for an upgrade only with its kubelet in.
            if next.phase() == Phase::Releasing && before.phase() != Phase::Releasing {
                prop_assert_eq!(before.phase(), Phase::Verifying);
                prop_assert_eq!(kind, EventKind::Verified);
                if let Some(p) = progress(&next) {
                    prop_assert!(kubelet_in(p), "released before the kubelet was in: {:?}", p);
                }
            }
            if next.phase() == Phase::Verifying
                && before.phase() == Phase::Upgrading
                && let Some(p) = progress(&next)
            {
                prop_assert!(kubelet_in(p), "verifying before the kubelet was in: {:?}", p);
            }
            if next == AgentState::Idle && before.phase().out_of_service() {
                prop_assert_eq!(before.phase(), Phase::Releasing);
            }
            if next.phase().out_of_service() {
                prop_assert!(next.held_slot().is_some(), "out of service without a lease: {:?}", next);
            }
            // An admin's cordon stays the admin's for the whole turn.
            if let (Some(c0), Some(c1)) = (cordon(&before), cordon(&next)) {
                prop_assert_eq!(c0, c1, "the cordon's owner changed");
            }
            let json = serde_json::to_string(&next).unwrap();
            prop_assert_eq!(serde_json::from_str::<AgentState>(&json).unwrap(), next.clone());
            state = next;
        }
    }
}
