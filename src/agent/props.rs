//! Random event sequences through the state machine, checking what must
//! hold whatever the driver (or the world) throws at it.

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::state::{AgentState, Event, EventKind, Phase};

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
