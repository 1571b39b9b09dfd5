//! How a waiting node goes for a Lease slot. Pure: the driver does the
//! I/O, this decides the order.
//!
//! The expensive cluster-wide gates (every Node, the DaemonSet pods, this
//! node's pods, Prometheus) are asked only by a node that holds a slot.
//! When many nodes find a slot free at once (every daemon started together
//! after a fleet-wide package upgrade, or a slot freed with hundreds
//! waiting), only the Lease decides who goes on: the others lose the race
//! for the slot having paid a Lease list and one small Namespace GET, not
//! a Node list each. A node that finds the gates blocking while it holds
//! the slot gives it back before anything is touched (nothing cordoned).

use super::ports::LeaseOutlook;

/// What a waiting node does after reading the Lease slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Approach {
    /// Every slot is held: wait for a Lease change.
    Wait,
    /// Already ours (a crash between taking it and persisting that):
    /// evaluate every gate holding it.
    LookHolding(String),
    /// A slot looks free: the Namespace's gates (one small GET), then take
    /// a free slot, then every gate holding it.
    TakeThenLook,
    /// The race for a free slot was lost and one still looks available:
    /// it may be an expired slot whose holder's Node still exists, which
    /// is taken over only after every gate passed (the holder may be down
    /// and broken). Every gate first, then take it, then look again.
    LookThenTake,
}

/// The next step from the Lease outlook; `lost_race`: a free slot was
/// already tried for in this look and another node won it.
pub(super) fn approach(outlook: &LeaseOutlook, lost_race: bool) -> Approach {
    match outlook {
        LeaseOutlook::Busy { .. } => Approach::Wait,
        LeaseOutlook::Mine(slot) => Approach::LookHolding(slot.clone()),
        LeaseOutlook::Available if lost_race => Approach::LookThenTake,
        LeaseOutlook::Available => Approach::TakeThenLook,
    }
}

/// How a node that found its gates blocking waits for its next look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlockedWait {
    /// Until the block's end, or earlier on a Lease change (a slot freed
    /// after a reboot finished: the cluster changed).
    UntilBlockEndOrLeaseChange,
    /// Until the block's end only. For a node that gave back a slot it
    /// took to look: its own release and the other waiters' looks are
    /// Lease changes, and waking on them while a block no one shares
    /// (Prometheus unreachable, this node's own pods) holds would turn the
    /// waiters into a loop of slot, full look, release.
    UntilBlockEnd,
}

pub(super) fn blocked_wait(gave_back_slot: bool) -> BlockedWait {
    if gave_back_slot {
        BlockedWait::UntilBlockEnd
    } else {
        BlockedWait::UntilBlockEndOrLeaseChange
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_slot_is_taken_before_the_expensive_gates() {
        assert_eq!(
            approach(&LeaseOutlook::Available, false),
            Approach::TakeThenLook
        );
    }

    #[test]
    fn held_slots_mean_waiting_whatever_happened_before() {
        let busy = LeaseOutlook::Busy {
            holders: vec!["n2".into()],
        };
        assert_eq!(approach(&busy, false), Approach::Wait);
        assert_eq!(approach(&busy, true), Approach::Wait);
    }

    #[test]
    fn our_own_slot_is_looked_at_holding_it() {
        let mine = LeaseOutlook::Mine("drydock-reboot-0".into());
        assert_eq!(
            approach(&mine, false),
            Approach::LookHolding("drydock-reboot-0".into())
        );
        assert_eq!(
            approach(&mine, true),
            Approach::LookHolding("drydock-reboot-0".into())
        );
    }

    #[test]
    fn a_slot_still_available_after_a_lost_race_is_looked_at_first() {
        // An expired slot whose holder still exists: gates decide takeover.
        assert_eq!(
            approach(&LeaseOutlook::Available, true),
            Approach::LookThenTake
        );
    }

    #[test]
    fn only_a_node_that_gave_a_slot_back_ignores_lease_changes() {
        assert_eq!(blocked_wait(true), BlockedWait::UntilBlockEnd);
        assert_eq!(blocked_wait(false), BlockedWait::UntilBlockEndOrLeaseChange);
    }
}
