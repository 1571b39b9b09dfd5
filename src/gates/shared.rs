//! A blocking verdict shared across the fleet. While a cluster-wide gate
//! blocks with no known end (a node NotReady, an alert firing), every
//! waiting node would list every Node, the DaemonSet pods and ask
//! Prometheus on each re-check: O(nodes x waiters) bytes. Instead the node
//! that finds such a block writes it on the drydock Namespace
//! ([`SharedBlock`]), and the others, which read that Namespace anyway,
//! wait until it runs out; then one of them looks again.
//!
//! Fail closed: a shared verdict can only make a node wait (at most
//! [`TTL`] per finding), never make a gate pass. Anything doubtful about it
//! (unreadable, expired, from the future, too long, older than the last
//! finished reboot, written under other gate settings, naming a gate that
//! is not cluster-wide) makes the reader ignore it and evaluate for itself.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{AlertObservation, GateReport, Verdict, alerts, daemonsets, nodes_ready, soak};
use crate::cluster::annotations::{ClusterControl, SharedBlock};
use crate::config::Settings;

/// The longest a shared verdict holds the others back.
const TTL: Duration = Duration::from_secs(180);
/// How far in the future a verdict's `at` may be (the writer's clock ahead).
const CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(30);
/// Gates whose answer is the same for every node with the same settings.
/// Never the blocking pods (this node's own) nor the local gates.
const SHAREABLE: [&str; 4] = [
    nodes_ready::NAME,
    daemonsets::NAME,
    soak::NAME,
    alerts::NAME,
];
/// Longest reason taken from the annotation (it ends up in STATUS= and logs).
const REASON_MAX: usize = 200;

/// Fingerprint of the settings the shareable gates depend on: nodes honour
/// only verdicts reached under the same ones. No URL goes in (it may carry
/// credentials), only which alert source is used. FNV-1a: stable across
/// builds, unlike std's hasher.
pub(crate) fn scope(settings: &Settings) -> String {
    let g = &settings.gates;
    let a = &settings.alerts;
    let daemonsets: Vec<String> = g
        .required_daemonsets
        .iter()
        .map(ToString::to_string)
        .collect();
    let text = format!(
        "node-selector={}\ndaemonsets={}\nconfigured={}\nsoak-ms={}\nprometheus={}\nalertmanager={}\nignore={}\nmatch-only={}",
        g.node_selector,
        daemonsets.join(","),
        g.required_daemonsets_configured,
        g.soak.as_millis(),
        a.prometheus_url.is_some(),
        a.alertmanager_url.is_some(),
        a.ignore.as_str(),
        a.match_only.as_ref().map_or("", |r| r.as_str()),
    );
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The shared verdict on the Namespace, when it still holds for this node:
/// its gate (as one of [`SHAREABLE`]) and the verdict.
pub(crate) fn in_force<'a>(
    settings: &Settings,
    control: &'a ClusterControl,
    now: Timestamp,
) -> Option<(&'static str, &'a SharedBlock)> {
    let b = control.cluster_blocked.as_ref()?;
    let gate = SHAREABLE.into_iter().find(|g| *g == b.gate)?;
    let ttl = SignedDuration::try_from(TTL).unwrap_or(SignedDuration::MAX);
    let fresh = b.until > now && b.at <= now + CLOCK_SKEW;
    let sane = b.until > b.at && b.until.duration_since(b.at) <= ttl;
    // A reboot finished since: the cluster changed, look again.
    let superseded = matches!(&control.last_reboot_finished, Ok(Some(f)) if f.at >= b.at);
    (fresh && sane && !superseded && b.scope == scope(settings)).then_some((gate, b))
}

/// The shared verdict as this node shows it: `<reason> (seen by <node> 40s ago)`.
pub(crate) fn describe(b: &SharedBlock, now: Timestamp) -> String {
    let reason: String = b
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(REASON_MAX)
        .collect();
    let by: String =
        b.by.chars()
            .filter(|c| !c.is_control())
            .take(REASON_MAX)
            .collect();
    format!("{reason} (seen by {by} {} ago)", super::ago(now, b.at))
}

/// What a node that just evaluated every cluster-wide gate should share:
/// the first blocking gate that is the same for the whole fleet, valid for
/// `recheck` (at most [`TTL`], and not past a soak's known end). Nothing
/// when the gates pass or only this node's own gates block, and not an
/// alert gate that could not ask Prometheus (maybe only this node cannot
/// reach it).
pub(crate) fn to_share(
    settings: &Settings,
    reports: &[GateReport],
    alert_observation: &AlertObservation,
    soak_end: Option<Timestamp>,
    node: &str,
    now: Timestamp,
    recheck: Duration,
) -> Option<SharedBlock> {
    let report = reports.iter().find(|r| {
        matches!(r.verdict, Verdict::Block(_))
            && SHAREABLE.contains(&r.gate)
            && (r.gate != alerts::NAME
                || matches!(alert_observation, AlertObservation::Fetched { .. }))
    })?;
    let ttl = SignedDuration::try_from(recheck.min(TTL)).unwrap_or_default();
    if ttl.is_zero() {
        return None;
    }
    let mut until = now + ttl;
    if report.gate == soak::NAME
        && let Some(end) = soak_end.filter(|e| *e > now)
    {
        until = until.min(end);
    }
    Some(SharedBlock {
        gate: report.gate.to_string(),
        reason: report.verdict.reason().unwrap_or_default().to_string(),
        by: node.to_string(),
        at: now,
        until,
        scope: scope(settings),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::annotations::FinishedReboot;
    use crate::gates::alerts::{AlertSource, SourceKind};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn now() -> Timestamp {
        t("2025-01-01T12:00:00Z")
    }

    fn verdict(s: &Settings, gate: &str, at: &str, until: &str) -> SharedBlock {
        SharedBlock {
            gate: gate.into(),
            reason: "node worker-9 NotReady for 5m".into(),
            by: "worker-3".into(),
            at: t(at),
            until: t(until),
            scope: scope(s),
        }
    }

    fn control(b: SharedBlock) -> ClusterControl {
        ClusterControl {
            cluster_blocked: Some(b),
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_verdict_is_in_force_until_it_runs_out() {
        let s = Settings::default();
        let c = control(verdict(
            &s,
            "nodes-ready",
            "2025-01-01T11:59:20Z",
            "2025-01-01T12:02:20Z",
        ));
        let (gate, b) = in_force(&s, &c, now()).expect("fresh");
        assert_eq!(gate, "nodes-ready");
        assert_eq!(
            describe(b, now()),
            "node worker-9 NotReady for 5m (seen by worker-3 40s ago)"
        );
        // Expired the instant `until` is reached.
        assert!(in_force(&s, &c, t("2025-01-01T12:02:19Z")).is_some());
        assert!(in_force(&s, &c, t("2025-01-01T12:02:20Z")).is_none());
        assert!(in_force(&s, &c, t("2025-01-01T13:00:00Z")).is_none());
    }

    #[test]
    fn doubtful_verdicts_are_ignored() {
        let s = Settings::default();
        let ignored = |b: SharedBlock| in_force(&s, &control(b), now()).is_none();
        // Written a little in the future (clock skew) is fine; far is not.
        assert!(!ignored(verdict(
            &s,
            "alerts",
            "2025-01-01T12:00:20Z",
            "2025-01-01T12:02:00Z"
        )));
        assert!(ignored(verdict(
            &s,
            "alerts",
            "2025-01-01T12:01:00Z",
            "2025-01-01T12:03:00Z"
        )));
        // Claims longer than the TTL, or ends before it starts.
        assert!(ignored(verdict(
            &s,
            "alerts",
            "2025-01-01T11:59:00Z",
            "2025-01-01T18:00:00Z"
        )));
        assert!(ignored(verdict(
            &s,
            "alerts",
            "2025-01-01T12:00:10Z",
            "2025-01-01T12:00:05Z"
        )));
        // Not a cluster-wide gate: this node's pods, local or Namespace gates.
        for gate in ["blocking-pods", "window", "paused", "halted", "", "Alerts"] {
            assert!(
                ignored(verdict(
                    &s,
                    gate,
                    "2025-01-01T11:59:00Z",
                    "2025-01-01T12:01:00Z"
                )),
                "{gate}"
            );
        }
        // Reached under other gate settings.
        let mut other = Settings::default();
        other.alerts.ignore = regex::Regex::new("^(Watchdog|InfoInhibitor|Noisy)$")
            .unwrap()
            .into();
        assert!(ignored(verdict(
            &other,
            "alerts",
            "2025-01-01T11:59:00Z",
            "2025-01-01T12:01:00Z"
        )));
        // A reboot finished after it was written: the cluster changed.
        let mut c = control(verdict(
            &s,
            "nodes-ready",
            "2025-01-01T11:59:00Z",
            "2025-01-01T12:01:00Z",
        ));
        c.last_reboot_finished = Ok(Some(FinishedReboot {
            at: t("2025-01-01T11:59:30Z"),
            node: "worker-9".into(),
        }));
        assert!(in_force(&s, &c, now()).is_none());
        c.last_reboot_finished = Ok(Some(FinishedReboot {
            at: t("2025-01-01T11:00:00Z"),
            node: "worker-9".into(),
        }));
        assert!(in_force(&s, &c, now()).is_some());
    }

    #[test]
    fn scope_tells_gate_settings_apart() {
        let a = Settings::default();
        assert_eq!(scope(&a), scope(&a.clone()));
        assert_eq!(scope(&a).len(), 16);
        let mut b = a.clone();
        b.gates.node_selector = "pool=a".into();
        assert_ne!(scope(&a), scope(&b));
        let mut b = a.clone();
        b.gates.soak = Duration::from_secs(60);
        assert_ne!(scope(&a), scope(&b));
        let mut b = a.clone();
        b.alerts.prometheus_url = Some("http://127.0.0.1:9090".into());
        assert_ne!(scope(&a), scope(&b));
        // Settings the shareable gates do not read do not matter.
        let mut b = a.clone();
        b.gates.blocking_pod_selectors = vec!["app=backup".into()];
        b.reboot.check_interval = Duration::from_secs(7);
        assert_eq!(scope(&a), scope(&b));
    }

    #[test]
    fn describe_keeps_annotation_text_to_one_short_line() {
        let s = Settings::default();
        let mut b = verdict(&s, "alerts", "2025-01-01T11:58:00Z", "2025-01-01T12:01:00Z");
        b.reason = format!("alert X firing\nSTATUS=ready{}", "x".repeat(500));
        let line = describe(&b, now());
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("alert X firing STATUS=ready"), "{line}");
        assert!(line.ends_with(" (seen by worker-3 2m ago)"), "{line}");
        assert!(line.chars().count() < 260, "{line}");
    }

    fn prom() -> AlertSource {
        AlertSource {
            kind: SourceKind::Prometheus,
            url: "http://127.0.0.1:9090".into(),
        }
    }

    fn report(gate: &'static str, verdict: Verdict) -> GateReport {
        GateReport { gate, verdict }
    }

    #[test]
    fn only_cluster_wide_blocks_are_shared() {
        let s = Settings::default();
        let recheck = Duration::from_secs(180);
        let fetched = AlertObservation::Fetched {
            source: prom(),
            alerts: vec![],
        };
        let share = |reports: &[GateReport], alerts: &AlertObservation| {
            to_share(&s, reports, alerts, None, "worker-3", now(), recheck)
        };
        let pass = report("nodes-ready", Verdict::Pass);
        // Passing gates, this node's pods, or skipped gates: nothing to share.
        assert_eq!(share(std::slice::from_ref(&pass), &fetched), None);
        assert_eq!(
            share(
                &[
                    pass.clone(),
                    report("blocking-pods", Verdict::Block("pod backup-1".into()))
                ],
                &fetched
            ),
            None
        );
        assert_eq!(
            share(
                &[report(
                    "alerts",
                    Verdict::NotEvaluated("not evaluated".into())
                )],
                &fetched
            ),
            None
        );
        // Prometheus unreachable from here may be this node's problem.
        let unreachable = AlertObservation::Unavailable {
            source: prom(),
            error: "unreachable: connection refused".into(),
        };
        let alert = report(
            "alerts",
            Verdict::Block("alerts: prometheus unreachable".into()),
        );
        assert_eq!(share(std::slice::from_ref(&alert), &unreachable), None);
        // A firing alert is shared, for the re-check period.
        let firing = report(
            "alerts",
            Verdict::Block("alert NodeDiskPressure firing".into()),
        );
        let b = share(&[pass.clone(), firing.clone()], &fetched).expect("shared");
        assert_eq!(
            (b.gate.as_str(), b.reason.as_str(), b.by.as_str()),
            ("alerts", "alert NodeDiskPressure firing", "worker-3")
        );
        assert_eq!((b.at, b.until), (now(), t("2025-01-01T12:03:00Z")));
        assert_eq!(b.scope, scope(&s));
        // The first shareable block, in gate order.
        let not_ready = report("nodes-ready", Verdict::Block("node w-9 NotReady".into()));
        let b = share(&[not_ready, firing.clone()], &fetched).unwrap();
        assert_eq!(b.gate, "nodes-ready");
        // Never longer than the TTL; a short check interval shortens it.
        let b = to_share(
            &s,
            std::slice::from_ref(&firing),
            &fetched,
            None,
            "w",
            now(),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(b.until, t("2025-01-01T12:03:00Z"));
        let b = to_share(
            &s,
            &[firing],
            &fetched,
            None,
            "w",
            now(),
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(b.until, t("2025-01-01T12:00:02Z"));
        // A soak shares no further than its end.
        let soak = report("soak", Verdict::Block("soak ends in 1m".into()));
        let b = to_share(
            &s,
            &[soak],
            &fetched,
            Some(t("2025-01-01T12:01:00Z")),
            "w",
            now(),
            recheck,
        )
        .unwrap();
        assert_eq!(b.until, t("2025-01-01T12:01:00Z"));
        // What it writes, it honours itself (same settings, fresh).
        let c = control(b);
        assert_eq!(in_force(&s, &c, now()).map(|(g, _)| g), Some("soak"));
    }
}
