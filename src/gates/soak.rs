//! Soak: let the cluster settle. No node's Ready condition changed within
//! the soak period, and no drydock reboot finished within it anywhere in the
//! cluster (recorded on the drydock Namespace by the node that finished).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{Verdict, ago, human, list_names};
use crate::cluster::annotations::{ClusterControl, LAST_REBOOT_FINISHED};
use crate::cluster::observe::NodeView;

pub(crate) const NAME: &str = super::GateName::Soak.as_str();

pub(crate) fn evaluate(
    nodes: &[NodeView],
    control: &ClusterControl,
    soak: Duration,
    now: Timestamp,
) -> Verdict {
    let soak_sd = SignedDuration::try_from(soak).unwrap_or(SignedDuration::MAX);
    // A time in the future (clock skew) counts as recent: fail closed.
    let recent = |t: Timestamp| now.duration_since(t) < soak_sd;
    // Rounded up to the minute: "ends in 50m", not 49m at 49m59s.
    let ends = |t: Timestamp| {
        let left = soak_sd.saturating_sub(now.duration_since(t));
        if left >= SignedDuration::from_mins(1) {
            human(left.saturating_add(SignedDuration::from_secs(59)))
        } else {
            human(left)
        }
    };
    let mut problems = Vec::new();
    match &control.last_reboot_finished {
        Err(raw) => problems.push(format!(
            "cannot read annotation {LAST_REBOOT_FINISHED}={raw:?} (expected \"<RFC 3339 time> <node>\")"
        )),
        Ok(Some(f)) if recent(f.at) => problems.push(format!(
            "drydock reboot of {} finished {} ago; soak ({}) ends in {}",
            f.node,
            ago(now, f.at),
            human(soak_sd),
            ends(f.at)
        )),
        Ok(_) => {}
    }
    let mut changed: Vec<(&str, Timestamp)> = nodes
        .iter()
        .filter_map(|n| n.ready_changed_at.map(|t| (n.name.as_str(), t)))
        .filter(|(_, t)| recent(*t))
        .collect();
    // Latest change first: it decides when the soak ends.
    changed.sort_by_key(|c| std::cmp::Reverse(c.1));
    match changed.as_slice() {
        [] => {}
        [(name, t)] => problems.push(format!(
            "node {name} Ready condition changed {} ago; soak ({}) ends in {}",
            ago(now, *t),
            human(soak_sd),
            ends(*t)
        )),
        [(_, latest), ..] => problems.push(format!(
            "{} nodes changed Ready condition within the soak ({}): {}; ends in {}",
            changed.len(),
            human(soak_sd),
            list_names(changed.iter().map(|(n, _)| *n)),
            ends(*latest)
        )),
    }
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Block(problems.join("; "))
    }
}

/// When the soak ends by itself: the latest finished reboot or Ready
/// change plus the soak period. `None` when it does not block, or when the
/// end is unknown (an unreadable annotation).
pub(crate) fn ends_at(
    nodes: &[NodeView],
    control: &ClusterControl,
    soak: Duration,
    now: Timestamp,
) -> Option<Timestamp> {
    let soak_sd = SignedDuration::try_from(soak).unwrap_or(SignedDuration::MAX);
    let finished = match &control.last_reboot_finished {
        Err(_) => return None,
        Ok(f) => f.as_ref().map(|f| f.at),
    };
    let latest = nodes
        .iter()
        .filter_map(|n| n.ready_changed_at)
        .chain(finished)
        .max()?;
    // A time in the future (clock skew) ends one soak after it, as `evaluate` counts it.
    let end = latest.saturating_add(soak_sd).ok()?;
    (end > now).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::annotations::FinishedReboot;
    use crate::cluster::observe::ReadyStatus;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn node(name: &str, changed: &str) -> NodeView {
        NodeView {
            name: name.into(),
            ready: ReadyStatus::True,
            ready_changed_at: Some(t(changed)),
        }
    }

    fn now() -> Timestamp {
        t("2025-01-02T12:00:00Z")
    }

    #[test]
    fn quiet_cluster_passes() {
        let nodes = [
            node("a", "2024-12-01T00:00:00Z"),
            node("b", "2025-01-01T11:59:59Z"),
        ];
        let c = ClusterControl {
            last_reboot_finished: Ok(Some(FinishedReboot {
                at: t("2025-01-01T11:00:00Z"),
                node: "b".into(),
            })),
            ..Default::default()
        };
        assert_eq!(evaluate(&nodes, &c, DAY, now()), Verdict::Pass);
    }

    #[test]
    fn recent_ready_change_blocks_with_time_left() {
        let nodes = [
            node("a", "2024-12-01T00:00:00Z"),
            node("worker-2", "2025-01-02T09:00:00Z"),
        ];
        assert_eq!(
            evaluate(&nodes, &ClusterControl::default(), DAY, now()),
            Verdict::Block(
                "node worker-2 Ready condition changed 3h ago; soak (1d) ends in 21h".into()
            )
        );
    }

    #[test]
    fn several_recent_changes_report_the_latest_end() {
        let nodes = [
            node("a", "2025-01-02T01:00:00Z"),
            node("b", "2025-01-02T11:00:00Z"),
        ];
        assert_eq!(
            evaluate(&nodes, &ClusterControl::default(), DAY, now()),
            Verdict::Block(
                "2 nodes changed Ready condition within the soak (1d): b, a; ends in 23h".into()
            )
        );
    }

    #[test]
    fn recent_finished_reboot_blocks() {
        let c = ClusterControl {
            last_reboot_finished: Ok(Some(FinishedReboot {
                at: t("2025-01-02T11:30:00Z"),
                node: "worker-1".into(),
            })),
            ..Default::default()
        };
        assert_eq!(
            evaluate(&[], &c, Duration::from_secs(3600), now()),
            Verdict::Block(
                "drydock reboot of worker-1 finished 30m ago; soak (1h) ends in 30m".into()
            )
        );
    }

    #[test]
    fn unreadable_annotation_and_future_times_block() {
        let c = ClusterControl {
            last_reboot_finished: Err("garbage".into()),
            ..Default::default()
        };
        match evaluate(&[], &c, DAY, now()) {
            Verdict::Block(r) => assert!(r.contains("cannot read annotation"), "{r}"),
            v => panic!("{v:?}"),
        }
        let nodes = [node("skewed", "2025-01-02T13:00:00Z")];
        assert!(matches!(
            evaluate(&nodes, &ClusterControl::default(), DAY, now()),
            Verdict::Block(_)
        ));
    }

    #[test]
    fn zero_soak_passes_everything_readable() {
        let nodes = [node("a", "2025-01-02T12:00:00Z")];
        assert_eq!(
            evaluate(&nodes, &ClusterControl::default(), Duration::ZERO, now()),
            Verdict::Pass
        );
    }

    #[test]
    fn soak_end_is_the_latest_change_plus_the_soak() {
        let nodes = [
            node("a", "2025-01-02T01:00:00Z"),
            node("b", "2025-01-02T11:00:00Z"),
        ];
        let c = ClusterControl {
            last_reboot_finished: Ok(Some(FinishedReboot {
                at: t("2025-01-02T10:00:00Z"),
                node: "c".into(),
            })),
            ..Default::default()
        };
        assert_eq!(
            ends_at(&nodes, &c, DAY, now()),
            Some(t("2025-01-03T11:00:00Z"))
        );
        // The annotation alone (what the cheap stage sees).
        assert_eq!(
            ends_at(&[], &c, DAY, now()),
            Some(t("2025-01-03T10:00:00Z"))
        );
        // Over already, or nothing recorded: no end to wait for.
        assert_eq!(ends_at(&nodes, &c, Duration::from_secs(3600), now()), None);
        assert_eq!(ends_at(&[], &ClusterControl::default(), DAY, now()), None);
        // Unreadable: blocks with no known end.
        let bad = ClusterControl {
            last_reboot_finished: Err("garbage".into()),
            ..Default::default()
        };
        assert_eq!(ends_at(&nodes, &bad, DAY, now()), None);
        // Whenever it blocks with a known end, the end agrees with the verdict.
        let end = ends_at(&nodes, &c, DAY, now()).unwrap();
        assert!(matches!(
            evaluate(&nodes, &c, DAY, now()),
            Verdict::Block(_)
        ));
        assert_eq!(evaluate(&nodes, &c, DAY, end), Verdict::Pass);
    }
}
