//! What a node publishes about itself on its Node object for `drydock
//! cluster status` and `kubectl`: the pure assembly of a [`NodeReport`] from
//! the reporter's view, the persisted times, and the maintenance windows.

use jiff::Timestamp;

use super::counters::Counters;
use super::notice::View;
use crate::cluster::node::{NodeReport, ReportedGate, UpgradeReport};
use crate::config::Window;
use crate::gates::window;

fn at(secs: Option<i64>) -> Option<Timestamp> {
    secs.and_then(|s| Timestamp::from_second(s).ok())
}

/// `agent_line`: the agent's own status line, when it has one (it says more
/// than the view: "waiting: lease held by worker-3").
pub(crate) fn node_report(
    view: &View,
    agent_line: Option<&str>,
    counters: &Counters,
    windows: &[Window],
    now: Timestamp,
) -> NodeReport {
    NodeReport {
        state: view.phase.as_str().to_string(),
        detail: agent_line.map_or_else(|| view.reason(), str::to_string),
        step: view.step.clone(),
        since: at(counters.phase_since),
        reboot_needed_since: at(counters.reboot_needed_since),
        last_reboot: at(counters.last_reboot_timestamp),
        blocked_by: view
            .blocked
            .iter()
            .map(|b| ReportedGate {
                gate: b.gate.to_string(),
                reason: super::notice::truncate(&b.reason, 300),
            })
            .collect(),
        slot: view.slot.clone(),
        window_open: window::is_open(windows, now),
        next_window: window::next_opening(windows, now).map(|z| z.timestamp()),
        upgrade: view.upgrade.as_ref().map(|(from, to, step)| UpgradeReport {
            from: from.clone(),
            to: to.clone(),
            step: step.clone(),
            since: at(counters.upgrade_started),
        }),
        reported_at: now,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::notice::{BlockedGate, Notice};

    #[test]
    fn report_follows_the_notices() {
        let t = |s| Timestamp::from_second(s).unwrap();
        let mut view = View::default();
        let mut counters = Counters::default();
        fn feed_into(view: &mut View, counters: &mut Counters, n: Notice, at: Timestamp) {
            view.apply(&n);
            counters.apply(&n, at);
        }
        macro_rules! feed {
            ($n:expr, $s:expr $(,)?) => {
                feed_into(&mut view, &mut counters, $n, t($s))
            };
        }
        feed!(
            Notice::RebootNeeded {
                reasons: vec!["kernel".into()],
            },
            1_000,
        );
        feed!(
            Notice::Waiting {
                blocked: vec![BlockedGate {
                    gate: crate::gates::GateName::NodesReady,
                    reason: "node w2 NotReady".into(),
                }],
            },
            1_010,
        );
        let r = node_report(&view, None, &counters, &[], t(1_020));
        assert_eq!(r.state, "pending");
        assert_eq!(r.since, Some(t(1_000)));
        assert_eq!(r.reboot_needed_since, Some(t(1_000)));
        assert_eq!(r.blocked_by[0].gate, "nodes-ready");
        assert!(r.window_open);
        assert_eq!(r.next_window, None);
        assert_eq!(r.reported_at, t(1_020));
        feed!(
            Notice::LeaseAcquired {
                slot: "drydock-default-0".into(),
            },
            1_100,
        );
        feed!(Notice::Draining { pods_left: 2 }, 1_110);
        let r = node_report(&view, None, &counters, &[], t(1_120));
        assert_eq!(
            (r.state.as_str(), r.slot.as_deref(), r.since),
            ("draining", Some("drydock-default-0"), Some(t(1_110)))
        );
        assert!(r.blocked_by.is_empty());
        feed!(
            Notice::VerifyFailed {
                reason: "kubelet not Ready".into(),
            },
            1_200,
        );
        let r = node_report(&view, None, &counters, &[], t(1_220));
        assert_eq!(
            (r.state.as_str(), r.step.as_deref()),
            ("failed", Some("verify"))
        );
        // A failed node keeps its slot: the fleet waits.
        assert_eq!(r.slot.as_deref(), Some("drydock-default-0"));
    }
}
