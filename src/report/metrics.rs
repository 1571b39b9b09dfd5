//! The Prometheus metrics model: a prometheus-client registry updated from
//! notices, encoded as OpenMetrics (HTTP) or classic text (node-exporter
//! textfile collector).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;

use jiff::Timestamp;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::counters::Counters;
use super::notice::{Notice, Phase};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The phases whose durations are histograms.
const TIMED_PHASES: [&str; 4] = ["drain", "reboot", "verify", "upgrade"];

/// 10 s to 4 h: a drain of seconds to a slow upgrade of hours.
fn phase_histogram() -> Histogram {
    Histogram::new([
        10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
    ])
}

fn unix(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

pub(crate) struct Metrics {
    registry: Registry,
    reboot_required: Gauge,
    state: Family<Labels, Gauge>,
    lease_held: Gauge,
    gate_blocked: Family<Labels, Gauge>,
    known_gates: BTreeSet<crate::gates::GateName>,
    reboots: Counter,
    drain_failures: Counter,
    apt_refusals: Counter,
    last_reboot: FloatGauge,
    verify_failed: Gauge,
    halted: Gauge,
    phase_seconds: Family<Labels, FloatGauge>,
    last_notice: FloatGauge,
    held_packages: Family<Labels, Gauge>,
    holds_ok: Gauge,
    phase_hist: Histograms,
    evictions_retried: Counter,
    upgrade_in_flight: Gauge,
    upgrade_started: FloatGauge,
    kubelet_version: Family<Labels, Gauge>,
    target_version: Family<Labels, Gauge>,
    versions: (Option<String>, Option<String>),
    /// The upgrade step last finished, while an upgrade is in flight.
    upgrade_step: Family<Labels, Gauge>,
    last_step: Option<String>,
    cert_expiry: FloatGauge,
    last_report: FloatGauge,
    reboot_needed_since: FloatGauge,
    state_since: FloatGauge,
    build: Family<Labels, Gauge>,
}

impl Metrics {
    /// A fresh model whose counters continue from `counters`.
    pub(crate) fn new(counters: &Counters) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            reboot_required: Gauge::default(),
            state: Family::default(),
            lease_held: Gauge::default(),
            gate_blocked: Family::default(),
            known_gates: BTreeSet::new(),
            reboots: Counter::default(),
            drain_failures: Counter::default(),
            apt_refusals: Counter::default(),
            last_reboot: FloatGauge::default(),
            verify_failed: Gauge::default(),
            halted: Gauge::default(),
            phase_seconds: Family::default(),
            last_notice: FloatGauge::default(),
            held_packages: Family::default(),
            holds_ok: Gauge::default(),
            phase_hist: Histograms::new_with_constructor(phase_histogram),
            evictions_retried: Counter::default(),
            upgrade_in_flight: Gauge::default(),
            upgrade_started: FloatGauge::default(),
            kubelet_version: Family::default(),
            target_version: Family::default(),
            versions: (None, None),
            upgrade_step: Family::default(),
            last_step: None,
            cert_expiry: FloatGauge::default(),
            last_report: FloatGauge::default(),
            reboot_needed_since: FloatGauge::default(),
            state_since: FloatGauge::default(),
            build: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "drydock_reboot_required",
            "1 when this node needs a reboot drydock has not done yet",
            m.reboot_required.clone(),
        );
        registry.register(
            "drydock_state",
            "drydock's phase on this node (one-hot over the state label)",
            m.state.clone(),
        );
        registry.register(
            "drydock_lease_held",
            "1 while this node holds a drydock maintenance lease slot",
            m.lease_held.clone(),
        );
        registry.register(
            "drydock_gate_blocked",
            "1 when the named safety gate blocked the last evaluation",
            m.gate_blocked.clone(),
        );
        registry.register(
            "drydock_reboots",
            "Reboots drydock started on this node",
            m.reboots.clone(),
        );
        registry.register(
            "drydock_drain_failures",
            "Drains that gave up (timeout) on this node",
            m.drain_failures.clone(),
        );
        registry.register(
            "drydock_apt_refused_packages",
            "Protected package changes the APT hook refused on this node",
            m.apt_refusals.clone(),
        );
        registry.register(
            "drydock_last_reboot_timestamp_seconds",
            "Unix time of the last reboot drydock started on this node (0: never)",
            m.last_reboot.clone(),
        );
        registry.register(
            "drydock_verify_failed",
            "1 when the post-reboot verification of this node failed",
            m.verify_failed.clone(),
        );
        registry.register(
            "drydock_halted",
            "1 while the cluster's drydock rollout is halted",
            m.halted.clone(),
        );
        registry.register(
            "drydock_last_phase_duration_seconds",
            "Duration of each phase of the last completed maintenance on this node",
            m.phase_seconds.clone(),
        );
        registry.register(
            "drydock_last_notice_timestamp_seconds",
            "Unix time drydock last reported anything (staleness check)",
            m.last_notice.clone(),
        );
        registry.register(
            "drydock_held_packages",
            "Installed protected packages on dpkg hold, by who holds them (drydock or admin)",
            m.held_packages.clone(),
        );
        registry.register(
            "drydock_holds_reconciled",
            "1 when the last reconciliation of dpkg holds succeeded, 0 when it failed",
            m.holds_ok.clone(),
        );
        registry.register(
            "drydock_phase_duration_seconds",
            "How long each phase of a maintenance took (drain, reboot, verify, upgrade)",
            m.phase_hist.clone(),
        );
        for phase in TIMED_PHASES {
            let _series = m.phase_hist.get_or_create(&label("phase", phase));
        }
        registry.register(
            "drydock_evictions_retried",
            "Pod evictions retried during drains (refused by a disruption budget, throttled, or failing)",
            m.evictions_retried.clone(),
        );
        registry.register(
            "drydock_upgrade_in_flight",
            "1 while a Kubernetes upgrade of this node is under way (until its lease is released)",
            m.upgrade_in_flight.clone(),
        );
        registry.register(
            "drydock_upgrade_started_timestamp_seconds",
            "Unix time the Kubernetes upgrade in flight started (0: none)",
            m.upgrade_started.clone(),
        );
        registry.register(
            "drydock_upgrade_step_info",
            "The Kubernetes upgrade step this node last finished, while its upgrade is in flight (value 1)",
            m.upgrade_step.clone(),
        );
        registry.register(
            "drydock_kubernetes_version_info",
            "The kubelet version of this node, as its Node object reports it (value 1)",
            m.kubelet_version.clone(),
        );
        registry.register(
            "drydock_kubernetes_target_version_info",
            "The cluster's target Kubernetes version (drydock.dev/kubernetes-version), as this node last read it (value 1)",
            m.target_version.clone(),
        );
        registry.register(
            "drydock_identity_certificate_expiry_timestamp_seconds",
            "Unix time drydock's own client certificate expires (0: none yet, or an administrator's kubeconfig)",
            m.cert_expiry.clone(),
        );
        registry.register(
            "drydock_last_report_timestamp_seconds",
            "Unix time the daemon last reported: every loop of the agent, at least every check interval (heartbeat)",
            m.last_report.clone(),
        );
        registry.register(
            "drydock_reboot_required_since_timestamp_seconds",
            "Unix time the pending reboot was first noticed (0: none pending)",
            m.reboot_needed_since.clone(),
        );
        registry.register(
            "drydock_state_since_timestamp_seconds",
            "Unix time this node entered its current phase (drydock_state)",
            m.state_since.clone(),
        );
        m.build
            .get_or_create(&label("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        registry.register(
            "drydock_build_info",
            "drydock's version, and the node it runs on",
            m.build.clone(),
        );
        let mut m = Metrics { registry, ..m };
        m.set_phase(Phase::Idle);
        m.sync_counters(counters);
        m
    }

    fn set_phase(&mut self, phase: Phase) {
        for p in Phase::ALL {
            self.state
                .get_or_create(&label("state", p.as_str()))
                .set(i64::from(p == phase));
        }
    }

    /// Moves the counters up to the persisted totals (they only grow).
    pub(crate) fn sync_counters(&mut self, counters: &Counters) {
        for (metric, total) in [
            (&self.reboots, counters.reboots_total),
            (&self.drain_failures, counters.drain_failures_total),
            (&self.apt_refusals, counters.apt_refusals_total),
        ] {
            let now = metric.get();
            if total > now {
                metric.inc_by(total - now);
            }
        }
        self.last_reboot
            .set(counters.last_reboot_timestamp.unwrap_or(0) as f64);
        let secs = |t: Option<i64>| t.unwrap_or(0) as f64;
        self.reboot_needed_since
            .set(secs(counters.reboot_needed_since));
        self.state_since.set(secs(counters.phase_since));
        self.upgrade_started.set(secs(counters.upgrade_started));
        self.upgrade_in_flight
            .set(i64::from(counters.upgrade_started.is_some()));
    }

    /// Names the node in `drydock_build_info{node=...}`, so a dashboard can
    /// show node names instead of scrape addresses.
    pub(crate) fn set_node(&mut self, node: &str) {
        self.build.clear();
        self.build
            .get_or_create(&vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                ("node".to_string(), node.to_string()),
            ])
            .set(1);
    }

    /// The daemon is alive and looping (the heartbeat).
    pub(crate) fn heartbeat(&mut self, now: Timestamp) {
        self.last_report.set(unix(now));
    }

    /// The eviction retries so far (the counter only moves up to it).
    pub(crate) fn set_evictions_retried(&mut self, total: u64) {
        let now = self.evictions_retried.get();
        if total > now {
            self.evictions_retried.inc_by(total - now);
        }
    }

    /// The kubelet's version on this node and the cluster's target (`None`:
    /// unknown / not set; the series is then absent).
    pub(crate) fn set_kubernetes_versions(&mut self, current: Option<&str>, target: Option<&str>) {
        if let Some(current) = current {
            set_info(&self.kubelet_version, &mut self.versions.0, current);
        }
        if let Some(target) = target {
            set_info(&self.target_version, &mut self.versions.1, target);
        }
    }

    /// When drydock's client certificate expires (`None`: no certificate).
    pub(crate) fn set_certificate_expiry(&mut self, expiry: Option<Timestamp>) {
        self.cert_expiry.set(expiry.map_or(0.0, unix));
    }

    /// Folds a notice into the gauges. Counters come from [`Counters`] via
    /// [`Metrics::sync_counters`], so they survive restarts.
    pub(crate) fn apply(&mut self, notice: &Notice, now: Timestamp) {
        self.last_notice.set(unix(now));
        self.heartbeat(now);
        if let Some(phase) = notice.phase() {
            self.set_phase(phase);
        }
        match notice {
            Notice::Idle => {
                self.reboot_required.set(0);
                self.lease_held.set(0);
                self.verify_failed.set(0);
                self.clear_gates();
            }
            Notice::RebootNeeded { .. } => {
                self.reboot_required.set(1);
            }
            Notice::Waiting { blocked } => {
                self.clear_gates();
                for b in blocked {
                    self.known_gates.insert(b.gate);
                    self.gate_blocked
                        .get_or_create(&label("gate", b.gate.as_str()))
                        .set(1);
                }
            }
            Notice::LeaseAcquired { .. } => {
                self.lease_held.set(1);
                self.clear_gates();
            }
            Notice::DrainFailed { .. } => {
                self.lease_held.set(0);
            }
            // The turn (and any upgrade in it) is over.
            Notice::Released => {
                self.lease_held.set(0);
                self.clear_upgrade_step();
            }
            Notice::Verified { durations } => {
                self.reboot_required.set(0);
                self.verify_failed.set(0);
                for (phase, d) in durations.measured() {
                    self.phase_seconds
                        .get_or_create(&label("phase", phase))
                        .set(d.as_secs_f64());
                    if TIMED_PHASES.contains(&phase) {
                        self.phase_hist
                            .get_or_create(&label("phase", phase))
                            .observe(d.as_secs_f64());
                    }
                }
                // An upgrade ends with its verification (the start is
                // persisted, so a reboot in between does not lose it).
                let started = self.upgrade_started.get();
                if self.upgrade_in_flight.get() == 1 && started > 0.0 {
                    self.phase_hist
                        .get_or_create(&label("phase", "upgrade"))
                        .observe((unix(now) - started).max(0.0));
                }
            }
            Notice::VerifyFailed { .. } => {
                self.verify_failed.set(1);
            }
            Notice::Halted { .. } => {
                self.halted.set(1);
            }
            Notice::HaltCleared => {
                self.halted.set(0);
            }
            Notice::Upgrading { from, to, step } => {
                self.set_kubernetes_versions(Some(from), Some(to));
                if self.last_step.as_deref() != Some(step.as_str()) {
                    self.clear_upgrade_step();
                    self.upgrade_step.get_or_create(&label("step", step)).set(1);
                    self.last_step = Some(step.clone());
                }
            }
            Notice::Draining { .. }
            | Notice::Drained { .. }
            | Notice::Rebooting { .. }
            | Notice::Verifying
            | Notice::Failed { .. }
            | Notice::AptRun { .. } => {}
        }
    }

    /// The outcome of a dpkg hold reconciliation: `None` when it failed
    /// (the counts keep their last known values).
    pub(crate) fn set_holds(&mut self, held: Option<(usize, usize)>) {
        self.holds_ok.set(i64::from(held.is_some()));
        if let Some((by_drydock, by_admin)) = held {
            for (holder, n) in [("drydock", by_drydock), ("admin", by_admin)] {
                self.held_packages
                    .get_or_create(&label("holder", holder))
                    .set(n as i64);
            }
        }
    }

    /// Gates seen before stay listed at 0, so a cleared gate reads "0", not "gone".
    fn clear_gates(&mut self) {
        for g in &self.known_gates {
            self.gate_blocked
                .get_or_create(&label("gate", g.as_str()))
                .set(0);
        }
    }

    /// OpenMetrics text, for the HTTP endpoint.
    pub(crate) fn openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Classic Prometheus text (what node-exporter's textfile collector parses).
    pub(crate) fn prometheus_text(&self) -> String {
        to_prometheus_text(&self.openmetrics())
    }
}

/// Every metric name drydock exports, as a query names it: counters with
/// `_total`, histograms with `_bucket`, `_sum` and `_count`. Read from the
/// registry itself, so alert rules and dashboards can be checked against it.
pub fn exported_names() -> BTreeSet<String> {
    let m = Metrics::new(&Counters::default());
    // prometheus-client leaves a family without series out of the text (as
    // the Go client does): one series each so every name shows.
    let any = label("name", "any");
    for family in [
        &m.state,
        &m.gate_blocked,
        &m.held_packages,
        &m.kubelet_version,
        &m.target_version,
        &m.upgrade_step,
        &m.build,
    ] {
        drop(family.get_or_create(&any));
    }
    drop(m.phase_seconds.get_or_create(&any));
    drop(m.phase_hist.get_or_create(&any));
    let text = m.prometheus_text();
    let mut names = BTreeSet::new();
    for (name, kind) in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
    {
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// Keeps one series in an info family: the old value's series is removed.
impl Metrics {
    fn clear_upgrade_step(&mut self) {
        if let Some(old) = self.last_step.take() {
            self.upgrade_step.remove(&label("step", &old));
        }
    }
}

fn set_info(family: &Family<Labels, Gauge>, last: &mut Option<String>, value: &str) {
    if last.as_deref() == Some(value) {
        return;
    }
    if let Some(old) = last.take() {
        family.remove(&label("version", &old));
    }
    family.get_or_create(&label("version", value)).set(1);
    *last = Some(value.to_string());
}

/// OpenMetrics -> classic text format: counters are named with their
/// `_total` suffix in HELP/TYPE, and OpenMetrics-only lines are dropped.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::notice::{BlockedGate, PhaseDurations};

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn one_hot_state_and_gates() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut m = Metrics::new(&Counters::default());
        m.apply(
            &Notice::RebootNeeded {
                reasons: vec!["x".into()],
            },
            now,
        );
        m.apply(
            &Notice::Waiting {
                blocked: vec![BlockedGate {
                    gate: crate::gates::GateName::Window,
                    reason: "closed".into(),
                }],
            },
            now,
        );
        let t = m.prometheus_text();
        assert_eq!(value(&t, "drydock_reboot_required"), Some(1.0));
        assert_eq!(value(&t, r#"drydock_state{state="pending"}"#), Some(1.0));
        assert_eq!(value(&t, r#"drydock_state{state="idle"}"#), Some(0.0));
        assert_eq!(
            value(&t, r#"drydock_gate_blocked{gate="window"}"#),
            Some(1.0)
        );
        m.apply(&Notice::Waiting { blocked: vec![] }, now);
        let t = m.prometheus_text();
        assert_eq!(
            value(&t, r#"drydock_gate_blocked{gate="window"}"#),
            Some(0.0)
        );
        let ones = t
            .lines()
            .filter(|l| l.starts_with("drydock_state{") && l.ends_with(" 1"))
            .count();
        assert_eq!(ones, 1);
    }

    #[test]
    fn an_upgrade_is_timed_from_its_persisted_start() {
        let t = |s| Timestamp::from_second(s).unwrap();
        let mut c = Counters::default();
        let upgrading = Notice::Upgrading {
            from: "v1.34.1".into(),
            to: "v1.35.0".into(),
            step: "kubeadm upgrade node".into(),
        };
        c.apply(&upgrading, t(1_000));
        // The daemon restarts (the node rebooted) and picks the start up.
        let mut m = Metrics::new(&c);
        let text = m.prometheus_text();
        assert_eq!(value(&text, "drydock_upgrade_in_flight"), Some(1.0));
        assert_eq!(
            value(&text, "drydock_upgrade_started_timestamp_seconds"),
            Some(1000.0)
        );
        m.apply(&upgrading, t(1_500));
        m.set_kubernetes_versions(Some("v1.35.0"), None);
        let verified = Notice::Verified {
            durations: PhaseDurations {
                verify: Some(std::time::Duration::from_secs(20)),
                ..Default::default()
            },
        };
        c.apply(&verified, t(1_600));
        m.apply(&verified, t(1_600));
        m.sync_counters(&c);
        let text = m.prometheus_text();
        assert!(
            text.contains(r#"drydock_phase_duration_seconds_sum{phase="upgrade"} 600.0"#),
            "{text}"
        );
        assert!(text.contains(r#"drydock_phase_duration_seconds_count{phase="verify"} 1"#));
        // One version series: the old one is gone.
        assert!(!text.contains(r#"drydock_kubernetes_version_info{version="v1.34.1"}"#));
        assert_eq!(
            value(
                &text,
                r#"drydock_kubernetes_version_info{version="v1.35.0"}"#
            ),
            Some(1.0)
        );
        c.apply(&Notice::Released, t(1_700));
        m.sync_counters(&c);
        assert_eq!(
            value(&m.prometheus_text(), "drydock_upgrade_in_flight"),
            Some(0.0)
        );
    }

    #[test]
    fn counters_continue_from_the_store() {
        let c = Counters {
            reboots_total: 4,
            last_reboot_timestamp: Some(1_700_000_000),
            ..Default::default()
        };
        let m = Metrics::new(&c);
        let t = m.prometheus_text();
        assert_eq!(value(&t, "drydock_reboots_total"), Some(4.0));
        assert!(t.contains("# TYPE drydock_reboots_total counter"));
        assert!(!t.contains("# EOF"));
        assert_eq!(
            value(&t, "drydock_last_reboot_timestamp_seconds"),
            Some(1.7e9)
        );
        assert!(m.openmetrics().ends_with("# EOF\n"));
    }
}
