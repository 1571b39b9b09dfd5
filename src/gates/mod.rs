//! The safety gates: pure functions of settings, observations and the
//! current time, each passing or blocking with a specific reason (shown as
//! `waiting: <reason>`).
//!
//! Cheap first, for scale: [`evaluate_local`] needs no API call; the agent
//! then looks at the Lease slots, and only a node that could take a slot
//! reads the drydock Namespace for [`evaluate_control`] (halted, paused,
//! soak after the last reboot: one small GET). Only when that passes does
//! it gather a [`ClusterObservation`] (Node list, DaemonSet pods, alerts)
//! and run [`evaluate_cluster`]. A cluster-wide block found that way is
//! [`shared`] on the Namespace, so the other waiting nodes stop at the
//! cheap stage until it runs out.

pub(crate) mod alerts;
pub(crate) mod blocking_pods;
pub(crate) mod daemonsets;
pub(crate) mod name;
pub(crate) mod nodes_ready;
pub(crate) mod paused;
pub(crate) mod shared;
pub(crate) mod soak;
pub(crate) mod window;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

pub use alerts::AlertObservation;
pub use name::GateName;
pub(crate) use paused::LocalPause;

use crate::cluster::annotations::{self, ClusterControl};
use crate::cluster::observe::ClusterObservation;
use crate::config::Settings;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Block(String),
    /// Not looked at because a cheaper gate already blocks; counts as a
    /// block (fail closed) but is not this gate's fault.
    NotEvaluated(String),
}

impl Verdict {
    pub fn passes(&self) -> bool {
        matches!(self, Verdict::Pass)
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Pass => None,
            Verdict::Block(r) | Verdict::NotEvaluated(r) => Some(r),
        }
    }

    pub fn evaluated(&self) -> bool {
        !matches!(self, Verdict::NotEvaluated(_))
    }
}

/// One gate's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateReport {
    pub gate: &'static str,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl GateReport {
    fn new(gate: &'static str, verdict: Verdict) -> GateReport {
        GateReport { gate, verdict }
    }
}

/// Whether every gate passed.
pub fn all_pass(reports: &[GateReport]) -> bool {
    reports.iter().all(|r| r.verdict.passes())
}

/// The first blocking gate, in evaluation order (the one to show).
pub fn first_block(reports: &[GateReport]) -> Option<&GateReport> {
    reports.iter().find(|r| !r.verdict.passes())
}

/// What the local gates look at (read from the store by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalObservation {
    pub pause: Option<LocalPause>,
}

/// Gates that need no API call: the local pause, then the maintenance window.
pub fn evaluate_local(
    settings: &Settings,
    local: &LocalObservation,
    now: Timestamp,
) -> Vec<GateReport> {
    vec![
        GateReport::new(paused::LOCAL, paused::evaluate_local(local.pause.as_ref())),
        GateReport::new(
            window::NAME,
            window::evaluate(&settings.maintenance.windows, now),
        ),
    ]
}

/// The cluster-wide gates, in order: halted, paused, nodes Ready, required
/// DaemonSets, soak, alerts, blocking pods. Every gate is evaluated (so
/// `drydock status` can explain each), even after one blocks.
pub fn evaluate_cluster(
    settings: &Settings,
    cluster: &ClusterObservation,
    alert_observation: &AlertObservation,
    now: Timestamp,
) -> Vec<GateReport> {
    let ns = &settings.lease.namespace;
    vec![
        GateReport::new(
            paused::HALTED,
            paused::evaluate_halted(&cluster.control, ns),
        ),
        GateReport::new(
            paused::CLUSTER,
            paused::evaluate_cluster(&cluster.control, ns),
        ),
        GateReport::new(
            nodes_ready::NAME,
            nodes_ready::evaluate(&cluster.nodes, &settings.gates.node_selector, now),
        ),
        GateReport::new(
            daemonsets::NAME,
            daemonsets::evaluate(
                &cluster.daemonsets,
                settings.gates.required_daemonsets_configured,
            ),
        ),
        GateReport::new(
            soak::NAME,
            soak::evaluate(&cluster.nodes, &cluster.control, settings.gates.soak, now),
        ),
        GateReport::new(
            alerts::NAME,
            alerts::evaluate(&settings.alerts, alert_observation),
        ),
        GateReport::new(
            blocking_pods::NAME,
            blocking_pods::evaluate(&cluster.blocking_pods),
        ),
    ]
}

/// What the cluster-wide gates said, and when asking again is worth it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterVerdict {
    pub reports: Vec<GateReport>,
    /// Every blocking gate ends by itself at this time (the soak); `None`
    /// when they pass or when some block has no known end.
    pub blocked_until: Option<Timestamp>,
}

/// Gates shown as "not evaluated" when the cheap stage already blocks.
const AFTER_CONTROL: [&str; 4] = [
    nodes_ready::NAME,
    daemonsets::NAME,
    alerts::NAME,
    blocking_pods::NAME,
];

/// The cheap stage of the cluster-wide gates: what the drydock Namespace
/// alone decides (halted, paused, the soak after the last finished reboot,
/// and a cluster-wide block another node found and [`shared`] there), from
/// one small GET. `Some` when it already blocks: then the caller lists no
/// Nodes or pods and asks no Prometheus, and the later gates are shown as
/// "not evaluated". `None`: go on with [`evaluate_cluster_verdict`]. A
/// shared verdict only ever adds a block.
pub fn evaluate_control(
    settings: &Settings,
    control: &ClusterControl,
    now: Timestamp,
) -> Option<ClusterVerdict> {
    let ns = &settings.lease.namespace;
    let mut reports = vec![
        GateReport::new(paused::HALTED, paused::evaluate_halted(control, ns)),
        GateReport::new(paused::CLUSTER, paused::evaluate_cluster(control, ns)),
        GateReport::new(
            soak::NAME,
            soak::evaluate(&[], control, settings.gates.soak, now),
        ),
    ];
    // Known while the Namespace's own soak blocks (None: unknown end).
    let soak_end = (!reports[2].verdict.passes())
        .then(|| soak::ends_at(&[], control, settings.gates.soak, now));
    let shared = shared::in_force(settings, control, now);
    let shared_block = |(_, b): (&'static str, &annotations::SharedBlock)| {
        Verdict::Block(shared::describe(b, now))
    };
    if let Some(s) = shared
        && s.0 == soak::NAME
        && soak_end.is_none()
    {
        reports[2].verdict = shared_block(s);
    }
    let blocker = first_block(&reports)
        .map(|r| r.gate)
        .or(shared.map(|(gate, _)| gate))?;
    reports.extend(AFTER_CONTROL.iter().map(|gate| match shared {
        Some(s) if s.0 == *gate => GateReport::new(gate, shared_block(s)),
        _ => GateReport::new(
            gate,
            Verdict::NotEvaluated(format!("not evaluated: {blocker} blocks")),
        ),
    }));
    let blocked_until = known_end(&reports, |gate| {
        let shared_end = shared.filter(|(g, _)| *g == gate).map(|(_, b)| b.until);
        match soak_end {
            // The Namespace's soak blocks; a shared soak verdict may last longer.
            Some(end) if gate == soak::NAME => end.map(|e| shared_end.map_or(e, |s| e.max(s))),
            _ => shared_end,
        }
    });
    Some(ClusterVerdict {
        reports,
        blocked_until,
    })
}

/// [`evaluate_cluster`], with when the block ends by itself.
pub fn evaluate_cluster_verdict(
    settings: &Settings,
    cluster: &ClusterObservation,
    alert_observation: &AlertObservation,
    now: Timestamp,
) -> ClusterVerdict {
    let reports = evaluate_cluster(settings, cluster, alert_observation, now);
    let soak_end = soak::ends_at(&cluster.nodes, &cluster.control, settings.gates.soak, now);
    let blocked_until = known_end(&reports, |gate| soak_end.filter(|_| gate == soak::NAME));
    ClusterVerdict {
        reports,
        blocked_until,
    }
}

/// When every blocking gate ends by itself (`end_of` knows, per gate), the
/// latest of those ends; unknown as soon as one has no known end. Gates not
/// evaluated behind a block are not blocks of their own.
fn known_end(
    reports: &[GateReport],
    end_of: impl Fn(&str) -> Option<Timestamp>,
) -> Option<Timestamp> {
    let mut ends = reports
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Block(_)))
        .map(|r| end_of(r.gate))
        .peekable();
    ends.peek()?;
    ends.collect::<Option<Vec<_>>>()?.into_iter().max()
}

/// Name of the report standing for every cluster-wide gate when the
/// cluster could not be read.
pub(crate) const CLUSTER_UNAVAILABLE: &str = GateName::Cluster.as_str();

/// The cluster-wide gates when [`observe`](crate::cluster::observe::observe)
/// failed: one blocking report with the error (fail closed).
pub fn cluster_unavailable(error: &crate::cluster::observe::ObserveError) -> Vec<GateReport> {
    vec![GateReport::new(
        CLUSTER_UNAVAILABLE,
        Verdict::Block(format!("cannot read the cluster: {error}")),
    )]
}

/// `3h12m`, `21h`, `1d2h`, `45s`: short and rounded down.
pub(crate) fn human(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    let (days, hours, minutes) = (s / 86_400, (s % 86_400) / 3_600, (s % 3_600) / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// How long ago `then` was, as [`human`] (0s for the future).
pub(crate) fn ago(now: Timestamp, then: Timestamp) -> String {
    human(now.duration_since(then))
}

/// `a, b, c, d, e and 2 more`.
fn list_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    const SHOWN: usize = 5;
    let names: Vec<&str> = names.collect();
    if names.len() <= SHOWN {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..SHOWN].join(", "),
            names.len() - SHOWN
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cluster-wide gate, in evaluation order (cheap first).
    const CLUSTER_GATE_ORDER: [&str; 7] = [
        "halted",
        "cluster-paused",
        "soak",
        "nodes-ready",
        "daemonsets",
        "alerts",
        "blocking-pods",
    ];
    use crate::cluster::annotations::FinishedReboot;
    use crate::cluster::observe::{NodeView, ReadyStatus};

    #[test]
    fn durations_read_well() {
        let h = |s: i64| human(SignedDuration::from_secs(s));
        assert_eq!(h(45), "45s");
        assert_eq!(h(300), "5m");
        assert_eq!(h(3 * 3600 + 12 * 60 + 5), "3h12m");
        assert_eq!(h(21 * 3600), "21h");
        assert_eq!(h(86_400), "1d");
        assert_eq!(h(26 * 3600 + 60), "1d2h");
        assert_eq!(h(-5), "0s");
    }

    #[test]
    fn local_gates_report_pause_then_window() {
        let s = Settings::default();
        let now: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let r = evaluate_local(&s, &LocalObservation::default(), now);
        assert_eq!(
            r.iter().map(|r| r.gate).collect::<Vec<_>>(),
            ["paused", "window"]
        );
        assert!(all_pass(&r));
        let local = LocalObservation {
            pause: Some(LocalPause {
                reason: "disk swap".into(),
                since: now,
            }),
        };
        let r = evaluate_local(&s, &local, now);
        assert_eq!(first_block(&r).unwrap().gate, "paused");
    }

    fn quiet_cluster() -> ClusterObservation {
        ClusterObservation {
            node_name: "n1".into(),
            nodes: vec![NodeView {
                name: "n1".into(),
                ready: ReadyStatus::True,
                ready_changed_at: Some("2024-01-01T00:00:00Z".parse().unwrap()),
            }],
            daemonsets: vec![],
            blocking_pods: vec![],
            control: ClusterControl::default(),
        }
    }

    #[test]
    fn cluster_gates_all_evaluated_in_order() {
        let s = Settings::default();
        let now: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let mut c = quiet_cluster();
        let r = evaluate_cluster(&s, &c, &AlertObservation::NotConfigured, now);
        assert_eq!(
            r.iter().map(|r| r.gate).collect::<Vec<_>>(),
            [
                "halted",
                "cluster-paused",
                "nodes-ready",
                "daemonsets",
                "soak",
                "alerts",
                "blocking-pods"
            ]
        );
        assert!(all_pass(&r), "{r:?}");
        c.nodes[0].ready = ReadyStatus::False;
        c.control.paused = Some("freeze".into());
        let r = evaluate_cluster(&s, &c, &AlertObservation::NotConfigured, now);
        assert_eq!(first_block(&r).unwrap().gate, "cluster-paused");
        assert_eq!(r.iter().filter(|r| !r.verdict.passes()).count(), 2);
    }

    #[test]
    fn reports_serialize_for_status_json() {
        let r = GateReport::new("alerts", Verdict::Block("alert X firing".into()));
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"gate": "alerts", "verdict": "block", "reason": "alert X firing"})
        );
        let r = GateReport::new("soak", Verdict::Pass);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"gate": "soak", "verdict": "pass"})
        );
    }

    #[test]
    fn control_stage_blocks_first_and_skips_the_expensive_gates() {
        let mut s = Settings::default();
        s.gates.soak = std::time::Duration::from_secs(3600);
        let now: Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        // Nothing on the Namespace: the expensive stage decides.
        assert_eq!(evaluate_control(&s, &ClusterControl::default(), now), None);
        // A reboot finished 10 minutes ago: soak, ending in 50 minutes.
        let finished = ClusterControl {
            last_reboot_finished: Ok(Some(FinishedReboot {
                at: "2025-01-01T11:50:00Z".parse().unwrap(),
                node: "n2".into(),
            })),
            ..Default::default()
        };
        let v = evaluate_control(&s, &finished, now).expect("soak blocks");
        assert_eq!(
            v.reports.iter().map(|r| r.gate).collect::<Vec<_>>(),
            CLUSTER_GATE_ORDER
        );
        assert_eq!(first_block(&v.reports).unwrap().gate, "soak");
        assert_eq!(
            v.reports[3].verdict,
            Verdict::NotEvaluated("not evaluated: soak blocks".into())
        );
        assert_eq!(
            v.blocked_until,
            Some("2025-01-01T12:50:00Z".parse().unwrap())
        );
        // Paused too: no known end any more.
        let mut paused = finished.clone();
        paused.paused = Some("freeze".into());
        let v = evaluate_control(&s, &paused, now).expect("blocks");
        assert_eq!(first_block(&v.reports).unwrap().gate, "cluster-paused");
        assert_eq!(v.blocked_until, None);
        assert_eq!(
            v.reports[4].verdict,
            Verdict::NotEvaluated("not evaluated: cluster-paused blocks".into())
        );
    }

    #[test]
    fn full_stage_knows_the_end_only_when_the_soak_alone_blocks() {
        let mut s = Settings::default();
        s.gates.soak = std::time::Duration::from_secs(3600);
        let now: Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        let mut c = quiet_cluster();
        let v = evaluate_cluster_verdict(&s, &c, &AlertObservation::NotConfigured, now);
        assert!(all_pass(&v.reports));
        assert_eq!(v.blocked_until, None);
        // A Ready flip 30 minutes ago (the Namespace did not show it).
        c.nodes[0].ready_changed_at = Some("2025-01-01T11:30:00Z".parse().unwrap());
        let v = evaluate_cluster_verdict(&s, &c, &AlertObservation::NotConfigured, now);
        assert_eq!(first_block(&v.reports).unwrap().gate, "soak");
        assert_eq!(
            v.blocked_until,
            Some("2025-01-01T12:30:00Z".parse().unwrap())
        );
        // And a node NotReady: that has no known end.
        c.nodes[0].ready = ReadyStatus::False;
        let v = evaluate_cluster_verdict(&s, &c, &AlertObservation::NotConfigured, now);
        assert_eq!(first_block(&v.reports).unwrap().gate, "nodes-ready");
        assert_eq!(v.blocked_until, None);
    }

    fn shared_verdict(s: &Settings, gate: &str, at: &str, until: &str) -> annotations::SharedBlock {
        annotations::SharedBlock {
            gate: gate.into(),
            reason: format!("{gate} blocks somewhere"),
            by: "worker-3".into(),
            at: at.parse().unwrap(),
            until: until.parse().unwrap(),
            scope: shared::scope(s),
        }
    }

    #[test]
    fn control_stage_honours_a_fresh_shared_verdict_until_it_ends() {
        let s = Settings::default();
        let now: Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        let control = ClusterControl {
            cluster_blocked: Some(shared_verdict(
                &s,
                "nodes-ready",
                "2025-01-01T11:59:20Z",
                "2025-01-01T12:02:20Z",
            )),
            ..Default::default()
        };
        let v = evaluate_control(&s, &control, now).expect("shared block");
        let block = first_block(&v.reports).unwrap();
        assert_eq!(block.gate, "nodes-ready");
        assert_eq!(
            block.verdict,
            Verdict::Block("nodes-ready blocks somewhere (seen by worker-3 40s ago)".into())
        );
        assert_eq!(
            v.reports.iter().map(|r| r.gate).collect::<Vec<_>>(),
            CLUSTER_GATE_ORDER
        );
        for r in &v.reports[4..] {
            assert_eq!(
                r.verdict,
                Verdict::NotEvaluated("not evaluated: nodes-ready blocks".into())
            );
        }
        assert_eq!(
            v.blocked_until,
            Some("2025-01-01T12:02:20Z".parse().unwrap())
        );
        // Run out, or garbage on the Namespace (parsed to None): evaluate in full.
        let later: Timestamp = "2025-01-01T12:02:20Z".parse().unwrap();
        assert_eq!(evaluate_control(&s, &control, later), None);
        let garbage = ClusterControl::from_annotations(
            &[(
                annotations::CLUSTER_BLOCKED.to_string(),
                "{\"gate\":".to_string(),
            )]
            .into(),
        );
        assert_eq!(evaluate_control(&s, &garbage, now), None);
    }

    #[test]
    fn a_shared_verdict_never_makes_a_gate_pass() {
        let mut s = Settings::default();
        s.gates.soak = std::time::Duration::from_secs(3600);
        let now: Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        let soaking = Ok(Some(FinishedReboot {
            at: "2025-01-01T11:50:00Z".parse().unwrap(),
            node: "n2".into(),
        }));
        let bases = [
            ClusterControl::default(),
            ClusterControl {
                halted: Some("n4 failed verification".into()),
                ..Default::default()
            },
            ClusterControl {
                paused: Some("freeze".into()),
                ..Default::default()
            },
            ClusterControl {
                last_reboot_finished: soaking.clone(),
                ..Default::default()
            },
            ClusterControl {
                last_reboot_finished: Err("garbage".into()),
                ..Default::default()
            },
        ];
        for base in bases {
            let without = evaluate_control(&s, &base, now);
            for gate in [
                "nodes-ready",
                "daemonsets",
                "soak",
                "alerts",
                "blocking-pods",
            ] {
                let mut with = base.clone();
                // Written after the finished reboot, so not superseded by it.
                with.cluster_blocked = Some(shared_verdict(
                    &s,
                    gate,
                    "2025-01-01T11:58:00Z",
                    "2025-01-01T12:01:00Z",
                ));
                let Some(with) = evaluate_control(&s, &with, now) else {
                    assert_eq!(gate, "blocking-pods", "a shareable verdict blocks");
                    assert_eq!(without, None);
                    continue;
                };
                let Some(without) = &without else { continue };
                // Whatever blocked without it still blocks, with the same reason.
                for (a, b) in without.reports.iter().zip(&with.reports) {
                    assert_eq!(a.gate, b.gate);
                    if let Verdict::Block(_) = a.verdict {
                        assert_eq!(a.verdict, b.verdict, "{base:?} + {gate}");
                    }
                    assert!(
                        !b.verdict.passes() || a.verdict.passes(),
                        "{base:?} + {gate}"
                    );
                }
                assert_eq!(
                    first_block(&with.reports).unwrap().gate,
                    first_block(&without.reports).unwrap().gate
                );
                // A shared end never shortens a known one.
                if let (Some(a), Some(b)) = (without.blocked_until, with.blocked_until) {
                    assert!(b >= a);
                }
                if without.blocked_until.is_none() {
                    assert_eq!(with.blocked_until, None, "{base:?} + {gate}");
                }
            }
        }
    }
}
