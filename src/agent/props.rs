//! Random event sequences through the state machine, checking what must
//! hold whatever the driver (or the world) throws at it.

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::state::{AgentState, Event, EventKind, Phase, SlotLoss};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn event() -> impl Strategy<Value = Event> {
    let vt = SignedDuration::from_secs(60);
    prop_oneof![
        (0i64..1000).prop_map(|s| Event::RebootNeeded {
            reasons: vec!["kernel".into()],
            now: t(s)
        }),
        Just(Event::RebootNotNeeded),
        (0u8..3, 0i64..1000).prop_map(|(n, s)| Event::LeaseAcquired {
            slot: format!("drydock-default-{n}"),
            now: t(s)
        }),
        any::<bool>().prop_map(|u| Event::PriorSchedulability { unschedulable: u }),
        (0i64..1000).prop_map(|s| Event::Cordoned { now: t(s) }),
        (0u8..3, 0i64..1000).prop_map(|(b, s)| Event::Drained {
            boot_id: format!("boot-{b}"),
            booted_at: None,
            now: t(s)
        }),
        (0i64..1000).prop_map(|s| Event::DrainAbandoned { retry_after: t(s) }),
        (0i64..1000).prop_map(|s| Event::RebootRequested { now: t(s) }),
        (0i64..1000).prop_map(move |s| Event::BootObserved {
            booted_at: t(s),
            now: t(s),
            verify_timeout: vt
        }),
        (0i64..1000).prop_map(|s| Event::Verified { now: t(s) }),
        Just(Event::Released),
        (0i64..1000).prop_map(|s| Event::Failed {
            error: "broken".into(),
            now: t(s)
        }),
        (0i64..1000).prop_map(|s| Event::LeaseLost {
            holder: "n2".into(),
            now: t(s)
        }),
        (0i64..1000).prop_map(move |s| Event::Resume {
            now: t(s),
            verify_timeout: vt
        }),
        Just(Event::ForceReleased),
    ]
}

/// What happened in the current cycle, tracked beside the machine.
#[derive(Default, Debug)]
struct Cycle {
    /// A boot change was observed after the reboot request.
    rebooted: bool,
    /// Reboot requests since the last person's resume.
    requests_unresumed: u32,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_for_any_event_sequence(events in prop::collection::vec(event(), 0..80)) {
        let mut state = AgentState::Idle;
        let mut cycle = Cycle::default();
        for event in events {
            let kind = event.kind();
            let before = state.clone();
            let next = match state.apply(event) {
                Ok(n) => n,
                Err(e) => {
                    // Loud, naming both, and nothing changed.
                    prop_assert_eq!(e.state, before.phase());
                    prop_assert_eq!(e.event, kind);
                    prop_assert!(e.to_string().contains(kind.as_str()));
                    continue;
                }
            };
            // A new cycle starts only from a plain Pending.
            if before.phase() == Phase::Pending && next.phase() == Phase::Locked {
                cycle = Cycle::default();
            }
            match kind {
                EventKind::BootObserved => cycle.rebooted = true,
                EventKind::RebootRequested => cycle.requests_unresumed += 1,
                EventKind::Resume => cycle.requests_unresumed = 0,
                _ => {}
            }
            // Never Releasing (the road to `Verified`) without a reboot and
            // a passed verification.
            if next.phase() == Phase::Releasing && before.phase() != Phase::Releasing {
                prop_assert_eq!(before.phase(), Phase::Verifying);
                prop_assert_eq!(kind, EventKind::Verified);
                prop_assert!(cycle.rebooted, "released without a reboot: {:?}", before);
            }
            // A finished cycle is only a released one.
            if next == AgentState::Idle && before.phase().out_of_service() {
                prop_assert_eq!(before.phase(), Phase::Releasing);
            }
            // Out of service only while holding a slot.
            if next.phase().out_of_service() {
                prop_assert!(next.held_slot().is_some(), "out of service without a lease: {:?}", next);
            }
            // A lost slot: undone and waiting before the reboot request,
            // kept and waiting to finish after it; never out of service
            // without a slot otherwise.
            if kind == EventKind::LeaseLost && before.phase().out_of_service() {
                match (before.slot_loss(), &next) {
                    (Some(SlotLoss::Restore { .. }), AgentState::Pending { resume: None, .. }) => {}
                    (Some(SlotLoss::Regain), AgentState::Pending { resume: Some(r), .. }) => {
                        prop_assert_eq!(r.as_ref(), &before);
                    }
                    other => prop_assert!(false, "lost slot: {:?}", other),
                }
            }
            if next.out_without_slot() {
                prop_assert!(
                    before.out_without_slot() || matches!(kind, EventKind::LeaseLost | EventKind::Resume)
                );
            }
            // At most one reboot request per cycle without a person.
            prop_assert!(cycle.requests_unresumed <= 1);
            // A failure keeps a real step to return to.
            if let AgentState::Failed { interrupted, .. } = &next {
                prop_assert!(matches!(
                    interrupted.phase(),
                    Phase::Locked | Phase::Cordoning | Phase::Draining | Phase::Rebooting | Phase::Verifying
                ), "{:?}", interrupted);
            }
            // The record survives a round trip.
            let json = serde_json::to_string(&next).unwrap();
            prop_assert_eq!(serde_json::from_str::<AgentState>(&json).unwrap(), next.clone());
            state = next;
        }
    }
}

/// Nodes sharing Lease slots, each driven as the driver drives it (its
/// cordon and slot actions played on a model cluster), with slots taken
/// away from their holders at random (a claim that ran out).
struct Fleet {
    states: Vec<AgentState>,
    /// Who holds each slot.
    slots: Vec<Option<usize>>,
    /// Unschedulable because drydock cordoned it.
    cordoned_by_us: Vec<bool>,
    admin: Vec<bool>,
    clock: i64,
}

impl Fleet {
    fn slot_of(name: &str) -> usize {
        name.trim_start_matches("drydock-default-").parse().unwrap()
    }

    /// Whether node `i` holds the slot its state names.
    fn holds(&self, i: usize) -> bool {
        self.states[i]
            .held_slot()
            .map(Self::slot_of)
            .is_some_and(|k| self.slots[k] == Some(i))
    }

    /// Cordoned by us, its slot gone, and its next step the uncordon: it
    /// stopped when the claim ran out and undoes as soon as it runs.
    fn undoing(&self, i: usize) -> bool {
        let s = &self.states[i];
        self.cordoned_by_us[i]
            && !self.holds(i)
            && (matches!(s.slot_loss(), Some(SlotLoss::Restore { .. }))
                || s.phase() == Phase::Releasing)
    }

    /// Lost its slot after asking for its reboot: waiting to win one back
    /// (or about to, once it notices).
    fn regaining(&self, i: usize) -> bool {
        let s = &self.states[i];
        s.out_without_slot() || (!self.holds(i) && s.slot_loss() == Some(SlotLoss::Regain))
    }

    /// One driver tick of node `i`; the event it applies, if any.
    fn tick(&mut self, i: usize) -> Option<Event> {
        self.clock += 1;
        let now = t(self.clock);
        let vt = SignedDuration::from_secs(60);
        let s = self.states[i].clone();
        // The guard every step but the release runs first: is the held
        // slot still ours? (Releasing was verified holding it; it only
        // uncordons and gives back what is still ours.)
        if !self.holds(i) && s.slot_loss().is_some() {
            if let Some(SlotLoss::Restore { uncordon: true }) = s.slot_loss() {
                self.cordoned_by_us[i] = false;
            }
            return Some(Event::LeaseLost {
                holder: "another".into(),
                now,
            });
        }
        Some(match s {
            AgentState::Idle => Event::RebootNeeded {
                reasons: vec!["kernel".into()],
                now,
            },
            AgentState::Pending { .. } => {
                let free = self.slots.iter().position(Option::is_none)?;
                self.slots[free] = Some(i);
                Event::LeaseAcquired {
                    slot: format!("drydock-default-{free}"),
                    now,
                }
            }
            AgentState::Locked { .. } => Event::PriorSchedulability {
                unschedulable: self.admin[i],
            },
            AgentState::Cordoning { cordon, .. } => {
                if cordon == super::state::Cordon::Ours {
                    self.cordoned_by_us[i] = true;
                }
                Event::Cordoned { now }
            }
            AgentState::Draining { .. } => Event::Drained {
                boot_id: format!("boot-{i}"),
                booted_at: None,
                now,
            },
            AgentState::Rebooting {
                requested_at: None, ..
            } => Event::RebootRequested { now },
            AgentState::Rebooting { .. } => Event::BootObserved {
                booted_at: now,
                now,
                verify_timeout: vt,
            },
            AgentState::Verifying { .. } => Event::Verified { now },
            AgentState::Releasing { .. } => {
                self.cordoned_by_us[i] = false;
                if self.holds(i)
                    && let Some(k) = s.held_slot().map(Self::slot_of)
                {
                    self.slots[k] = None;
                }
                Event::Released
            }
            AgentState::Upgrading { .. } | AgentState::Failed { .. } => return None,
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The invariant drydock keeps across the fleet: at every moment,
    ///   cordoned by drydock <= slots + regaining + undoing
    /// where `regaining` lost their slot after asking for their reboot and
    /// wait, cordoned, to win one back, and `undoing` lost it before that
    /// (or after verifying) and have only their uncordon left to do. A
    /// node verifies and declares itself done only holding a slot.
    #[test]
    fn cordoned_nodes_never_exceed_the_slots_plus_those_winning_one_back(
        concurrency in 1usize..3,
        admin in prop::collection::vec(any::<bool>(), 4),
        steps in prop::collection::vec((0usize..4, 0u8..10), 0..200),
    ) {
        let mut fleet = Fleet {
            states: vec![AgentState::Idle; 4],
            slots: vec![None; concurrency],
            cordoned_by_us: vec![false; 4],
            admin,
            clock: 0,
        };
        for (node, action) in steps {
            if action >= 8 {
                // A claim runs out: the slot is free for anyone.
                let k = node % concurrency;
                fleet.slots[k] = None;
            } else if let Some(event) = fleet.tick(node) {
                let kind = event.kind();
                let before = fleet.states[node].clone();
                if kind == EventKind::Verified {
                    let slot = before.held_slot().map(Fleet::slot_of);
                    prop_assert!(
                        slot.is_some_and(|k| fleet.slots[k] == Some(node)),
                        "node {} finished without its slot: {:?}", node, before
                    );
                }
                fleet.states[node] = before.apply(event).unwrap();
            }
            let cordoned = fleet.cordoned_by_us.iter().filter(|c| **c).count();
            let regaining = (0..4).filter(|i| fleet.regaining(*i)).count();
            let undoing = (0..4).filter(|i| fleet.undoing(*i)).count();
            prop_assert!(
                cordoned <= concurrency + regaining + undoing,
                "{} cordoned, {} slots, {} regaining, {} undoing: {:?}",
                cordoned, concurrency, regaining, undoing, fleet.states
            );
            // Each node cordoned by us is exactly one of: holding its slot,
            // winning one back, undoing.
            for (i, s) in fleet.states.iter().enumerate() {
                if fleet.cordoned_by_us[i] {
                    let kinds = [fleet.holds(i), fleet.regaining(i), fleet.undoing(i)];
                    prop_assert_eq!(
                        kinds.iter().filter(|k| **k).count(), 1,
                        "node {} cordoned: {:?}", i, s
                    );
                }
            }
        }
    }
}
