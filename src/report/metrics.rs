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
use prometheus_client::registry::Registry;

use super::counters::Counters;
use super::notice::{Notice, Phase};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

pub struct Metrics {
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
}

impl Metrics {
    /// A fresh model whose counters continue from `counters`.
    pub fn new(counters: &Counters) -> Metrics {
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
        let build: Family<Labels, Gauge> = Family::default();
        build
            .get_or_create(&label("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        registry.register("drydock_build_info", "drydock's version", build);
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
    pub fn sync_counters(&mut self, counters: &Counters) {
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
    }

    /// Folds a notice into the gauges. Counters come from [`Counters`] via
    /// [`Metrics::sync_counters`], so they survive restarts.
    pub fn apply(&mut self, notice: &Notice, now: Timestamp) {
        self.last_notice.set(now.as_millisecond() as f64 / 1000.0);
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
            Notice::DrainFailed { .. } | Notice::Released => {
                self.lease_held.set(0);
            }
            Notice::Verified { durations } => {
                self.reboot_required.set(0);
                self.verify_failed.set(0);
                for (phase, d) in durations.measured() {
                    self.phase_seconds
                        .get_or_create(&label("phase", phase))
                        .set(d.as_secs_f64());
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
            Notice::Draining { .. }
            | Notice::Drained { .. }
            | Notice::Rebooting { .. }
            | Notice::Upgrading { .. }
            | Notice::Verifying
            | Notice::Failed { .. }
            | Notice::AptRun { .. } => {}
        }
    }

    /// The outcome of a dpkg hold reconciliation: `None` when it failed
    /// (the counts keep their last known values).
    pub fn set_holds(&mut self, held: Option<(usize, usize)>) {
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
    pub fn openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Classic Prometheus text (what node-exporter's textfile collector parses).
    pub fn prometheus_text(&self) -> String {
        to_prometheus_text(&self.openmetrics())
    }
}

/// OpenMetrics -> classic text format: counters are named with their
/// `_total` suffix in HELP/TYPE, and OpenMetrics-only lines are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
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
    use crate::report::notice::BlockedGate;

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
