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
    /// An expired slot that could not be taken as free (its holder's Node
    /// still exists: it may be down and broken), or free slots lost to
    /// others too often in one look: every gate first, then take it, then
    /// look again.
    LookThenTake,
}

/// Races for free slots lost in one look before the node looks at every
/// gate first. With concurrency above 1 a waiter that lost one free slot
/// often finds another; going for it costs a Lease write and a Namespace
/// GET, where looking first costs a Node list. The bound keeps a slot that
/// reads free but cannot be taken from looping.
const FREE_SLOT_RACES: u32 = 3;

/// The next step from the Lease outlook; `lost_races`: how many times in
/// this look a slot was tried for and another node won it.
pub(super) fn approach(outlook: &LeaseOutlook, lost_races: u32) -> Approach {
    match outlook {
        LeaseOutlook::Busy { .. } => Approach::Wait,
        LeaseOutlook::Mine(slot) => Approach::LookHolding(slot.clone()),
        LeaseOutlook::Available if lost_races < FREE_SLOT_RACES => Approach::TakeThenLook,
        LeaseOutlook::Available => Approach::LookThenTake,
        // The first try takes it if the holder's Node is gone.
        LeaseOutlook::Expired if lost_races == 0 => Approach::TakeThenLook,
        LeaseOutlook::Expired => Approach::LookThenTake,
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
            approach(&LeaseOutlook::Available, 0),
            Approach::TakeThenLook
        );
    }

    #[test]
    fn held_slots_mean_waiting_whatever_happened_before() {
        let busy = LeaseOutlook::Busy {
            holders: vec!["n2".into()],
        };
        assert_eq!(approach(&busy, 0), Approach::Wait);
        assert_eq!(approach(&busy, 1), Approach::Wait);
    }

    #[test]
    fn our_own_slot_is_looked_at_holding_it() {
        let mine = LeaseOutlook::Mine("drydock-reboot-0".into());
        assert_eq!(
            approach(&mine, 0),
            Approach::LookHolding("drydock-reboot-0".into())
        );
        assert_eq!(
            approach(&mine, 1),
            Approach::LookHolding("drydock-reboot-0".into())
        );
    }

    #[test]
    fn an_expired_slot_not_taken_as_free_is_looked_at_first() {
        // Its holder's Node still exists: every gate decides the takeover.
        assert_eq!(approach(&LeaseOutlook::Expired, 0), Approach::TakeThenLook);
        assert_eq!(approach(&LeaseOutlook::Expired, 1), Approach::LookThenTake);
    }

    #[test]
    fn another_free_slot_after_a_lost_race_is_gone_for_without_the_expensive_look() {
        // Concurrency above 1: the herd's losers of one slot try the next.
        assert_eq!(
            approach(&LeaseOutlook::Available, 1),
            Approach::TakeThenLook
        );
        assert_eq!(
            approach(&LeaseOutlook::Available, 2),
            Approach::TakeThenLook
        );
        // A slot that reads free but keeps being lost: look first.
        assert_eq!(
            approach(&LeaseOutlook::Available, FREE_SLOT_RACES),
            Approach::LookThenTake
        );
    }

    #[test]
    fn only_a_node_that_gave_a_slot_back_ignores_lease_changes() {
        assert_eq!(blocked_wait(true), BlockedWait::UntilBlockEnd);
        assert_eq!(blocked_wait(false), BlockedWait::UntilBlockEndOrLeaseChange);
    }
}
