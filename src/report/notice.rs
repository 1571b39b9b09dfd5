//! What the agent tells the reporting layer, and the pure wording of it:
//! the phase it implies, the one-line status, Kubernetes Event fields, chat
//! text. No I/O here.

use std::time::Duration;

use serde::Serialize;

/// Something the agent did or saw. The agent sends one whenever its state
/// changes (and again after a restart, for the state it resumes in); every
/// notice is idempotent for metrics and annotations.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Notice {
    /// Nothing pending: no reboot or upgrade needed.
    Idle,
    /// A reboot is needed; `reasons` are short human phrases
    /// ("/var/run/reboot-required (linux-image-6.1.0-21-amd64)", "newer kernel installed").
    RebootNeeded { reasons: Vec<String> },
    /// The gates were evaluated; `blocked` is empty when every gate passes.
    Waiting { blocked: Vec<BlockedGate> },
    /// This node holds lease slot `slot` (also sent again when resuming with it).
    LeaseAcquired { slot: String },
    /// Cordoned and evicting; `pods_left` still to go.
    Draining { pods_left: usize },
    /// The drain gave up (timeout); the node was uncordoned (if drydock had
    /// cordoned it) and the lease released. `blocking_pods` as "namespace/name".
    DrainFailed {
        reason: String,
        blocking_pods: Vec<String>,
    },
    /// Drained: `summary` says what happened to which pod (the drain
    /// report's text); `forced` when pods were deleted despite their budget.
    Drained { summary: String, forced: bool },
    /// About to ask logind to reboot; `boot_id` is the current boot's id.
    Rebooting { boot_id: String },
    /// A Kubernetes upgrade step is running on this node.
    Upgrading {
        from: String,
        to: String,
        step: String,
    },
    /// Back after the reboot (or upgrade), running the post-checks.
    Verifying,
    /// Post-checks passed; about to uncordon and release.
    Verified { durations: PhaseDurations },
    /// Post-checks failed: the node stays cordoned and keeps the lease.
    VerifyFailed { reason: String },
    /// The lease was released; soaking.
    Released,
    /// The cluster is halted (by `node`, maybe this one) for `reason`.
    Halted { node: String, reason: String },
    /// The cluster halt was cleared.
    HaltCleared,
    /// A step failed outside verification (kept until resolved or resumed).
    Failed { step: String, error: String },
    /// An apt/dpkg run finished; `changed` packages, `refused` protected ones.
    AptRun {
        changed: Vec<String>,
        refused: Vec<String>,
    },
}

/// One gate that does not pass, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockedGate {
    /// Stable gate name, used as a metric label ("window", "nodes-ready", ...).
    pub gate: crate::gates::GateName,
    pub reason: String,
}

/// How long each phase of one maintenance cycle took.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseDurations {
    #[serde(serialize_with = "secs")]
    pub drain: Option<Duration>,
    #[serde(serialize_with = "secs")]
    pub reboot: Option<Duration>,
    #[serde(serialize_with = "secs")]
    pub verify: Option<Duration>,
    /// Lease taken to verified.
    #[serde(serialize_with = "secs")]
    pub total: Option<Duration>,
}

fn secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl PhaseDurations {
    /// (phase label, duration) for the phases that were measured.
    pub(crate) fn measured(&self) -> Vec<(&'static str, Duration)> {
        [
            ("drain", self.drain),
            ("reboot", self.reboot),
            ("verify", self.verify),
            ("total", self.total),
        ]
        .into_iter()
        .filter_map(|(name, d)| d.map(|d| (name, d)))
        .collect()
    }
}

/// Where this node is in its cycle (one vocabulary with the agent).
pub(crate) use crate::phase::Phase;

/// Kubernetes Event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Severity {
    Normal,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        }
    }
}

/// The fields of a Kubernetes Event about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub severity: Severity,
    /// CamelCase, machine-readable ("Rebooting").
    pub reason: &'static str,
    /// What drydock did or is doing ("Reboot").
    pub action: &'static str,
    pub note: String,
}

/// Longest free text put in a status line, annotation or event note.
const MAX_TEXT: usize = 1000;

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

fn one_line(text: &str) -> String {
    truncate(
        &text.split_whitespace().collect::<Vec<_>>().join(" "),
        MAX_TEXT,
    )
}

fn list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl Notice {
    /// Short kebab-case name, used as the webhook `event` field.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Notice::Idle => "idle",
            Notice::RebootNeeded { .. } => "reboot-needed",
            Notice::Waiting { .. } => "waiting",
            Notice::LeaseAcquired { .. } => "lease-acquired",
            Notice::Draining { .. } => "draining",
            Notice::DrainFailed { .. } => "drain-failed",
            Notice::Drained { .. } => "drained",
            Notice::Rebooting { .. } => "rebooting",
            Notice::Upgrading { .. } => "upgrading",
            Notice::Verifying => "verifying",
            Notice::Verified { .. } => "verified",
            Notice::VerifyFailed { .. } => "verify-failed",
            Notice::Released => "released",
            Notice::Halted { .. } => "halted",
            Notice::HaltCleared => "halt-cleared",
            Notice::Failed { .. } => "failed",
            Notice::AptRun { .. } => "apt-run",
        }
    }

    /// The phase this notice puts the node in; `None` leaves it unchanged.
    pub(crate) fn phase(&self) -> Option<Phase> {
        Some(match self {
            Notice::Idle => Phase::Idle,
            Notice::RebootNeeded { .. } | Notice::DrainFailed { .. } => Phase::Pending,
            Notice::LeaseAcquired { .. } => Phase::Locked,
            Notice::Draining { .. } => Phase::Draining,
            Notice::Rebooting { .. } => Phase::Rebooting,
            Notice::Upgrading { .. } => Phase::Upgrading,
            Notice::Verifying => Phase::Verifying,
            Notice::Verified { .. } => Phase::Releasing,
            Notice::VerifyFailed { .. } | Notice::Failed { .. } => Phase::Failed,
            Notice::Released => Phase::Soaking,
            Notice::Waiting { .. }
            | Notice::Drained { .. }
            | Notice::Halted { .. }
            | Notice::HaltCleared
            | Notice::AptRun { .. } => return None,
        })
    }

    pub(crate) fn severity(&self) -> Severity {
        match self {
            Notice::DrainFailed { .. }
            | Notice::VerifyFailed { .. }
            | Notice::Halted { .. }
            | Notice::Failed { .. }
            | Notice::Drained { forced: true, .. } => Severity::Warning,
            Notice::AptRun { refused, .. } if !refused.is_empty() => Severity::Warning,
            _ => Severity::Normal,
        }
    }

    /// One human sentence about this notice (status line, annotation, chat).
    pub(crate) fn summary(&self) -> String {
        let text = match self {
            Notice::Idle => "up to date; nothing to do".to_string(),
            Notice::RebootNeeded { reasons } if reasons.is_empty() => "reboot needed".into(),
            Notice::RebootNeeded { reasons } => format!("reboot needed: {}", list(reasons)),
            Notice::Waiting { blocked } => match blocked.as_slice() {
                [] => "all gates pass".to_string(),
                [one] => format!("waiting for {}: {}", one.gate, one.reason),
                [first, rest @ ..] => format!(
                    "waiting for {}: {} (and {} more gate{})",
                    first.gate,
                    first.reason,
                    rest.len(),
                    if rest.len() == 1 { "" } else { "s" }
                ),
            },
            Notice::LeaseAcquired { slot } => format!("holding lease {slot}"),
            Notice::Draining { pods_left } => format!(
                "draining: {pods_left} pod{} left",
                if *pods_left == 1 { "" } else { "s" }
            ),
            Notice::DrainFailed {
                reason,
                blocking_pods,
            } if blocking_pods.is_empty() => {
                format!("drain failed: {reason}; uncordoned, lease released, will retry")
            }
            Notice::DrainFailed {
                reason,
                blocking_pods,
            } => format!(
                "drain failed: {reason} (blocked by {}); uncordoned, lease released, will retry",
                list(blocking_pods)
            ),
            Notice::Drained { summary, .. } => format!("drained: {summary}"),
            Notice::Rebooting { .. } => "rebooting".to_string(),
            Notice::Upgrading { from, to, step } => {
                format!("upgrading Kubernetes {from} -> {to}: {step}")
            }
            Notice::Verifying => "verifying node health".to_string(),
            Notice::Verified { durations } => match durations.total {
                Some(t) => format!("verified healthy ({} in maintenance)", human(t)),
                None => "verified healthy".to_string(),
            },
            Notice::VerifyFailed { reason } => format!(
                "verification FAILED: {reason}; node stays cordoned and keeps the lease (fleet halted)"
            ),
            Notice::Released => "lease released; soaking".to_string(),
            Notice::Halted { node, reason } => format!("cluster HALTED by {node}: {reason}"),
            Notice::HaltCleared => "cluster halt cleared".to_string(),
            Notice::Failed { step, error } => format!("FAILED at {step}: {error}"),
            Notice::AptRun { changed, refused } if refused.is_empty() => {
                format!("apt changed {} package(s)", changed.len())
            }
            Notice::AptRun { changed, refused } => format!(
                "apt changed {} package(s), refused protected: {}",
                changed.len(),
                list(refused)
            ),
        };
        one_line(&text)
    }

    /// The Kubernetes Event for this notice, if it deserves one: one for
    /// every phase, so `kubectl describe node` tells the story. `Draining`
    /// progress does not repeat; the caller drops consecutive duplicates
    /// (and an `Idle` that follows no maintenance).
    pub fn event(&self) -> Option<EventSpec> {
        let (reason, action, note) = match self {
            Notice::Idle => ("UpToDate", "Complete", self.summary()),
            Notice::Verifying => ("Verifying", "Verify", self.summary()),
            Notice::AptRun { refused, .. } if refused.is_empty() => return None,
            Notice::RebootNeeded { .. } => ("RebootRequired", "Detect", self.summary()),
            Notice::Waiting { blocked } if blocked.is_empty() => {
                ("GatesPassed", "Evaluate", self.summary())
            }
            Notice::Waiting { .. } => ("GatesBlocked", "Evaluate", self.summary()),
            Notice::LeaseAcquired { .. } => ("LeaseAcquired", "Lock", self.summary()),
            // The count changes with every eviction; one event per drain.
            Notice::Draining { .. } => ("Draining", "Drain", "cordoned; evicting pods".into()),
            Notice::DrainFailed { .. } => ("DrainFailed", "Drain", self.summary()),
            Notice::Drained { .. } => ("Drained", "Drain", self.summary()),
            Notice::Rebooting { .. } => ("Rebooting", "Reboot", self.summary()),
            Notice::Upgrading { .. } => ("Upgrading", "Upgrade", self.summary()),
            Notice::Verified { .. } => ("Verified", "Verify", self.summary()),
            Notice::VerifyFailed { .. } => ("VerifyFailed", "Verify", self.summary()),
            Notice::Released => ("LeaseReleased", "Release", self.summary()),
            Notice::Halted { .. } => ("ClusterHalted", "Halt", self.summary()),
            Notice::HaltCleared => ("HaltCleared", "Resume", self.summary()),
            Notice::Failed { .. } => ("Failed", "Maintain", self.summary()),
            Notice::AptRun { .. } => ("ProtectedPackageRefused", "Protect", self.summary()),
        };
        Some(EventSpec {
            severity: self.severity(),
            reason,
            action,
            note,
        })
    }
}

/// What the status line and annotation are made from: the current phase,
/// the latest words about it, and whether the cluster is halted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    pub phase: Phase,
    pub detail: String,
    pub halted: Option<(String, String)>,
    /// The step a failure or an upgrade is at.
    pub step: Option<String>,
    /// The gates that blocked the last evaluation.
    pub blocked: Vec<BlockedGate>,
    /// The Lease slot held.
    pub slot: Option<String>,
    /// A Kubernetes upgrade in flight: (from, to, step).
    pub upgrade: Option<(String, String, String)>,
}

impl Default for View {
    fn default() -> Self {
        View {
            phase: Phase::Idle,
            detail: "starting".to_string(),
            halted: None,
            step: None,
            blocked: Vec::new(),
            slot: None,
            upgrade: None,
        }
    }
}

impl View {
    /// Folds a notice in. Returns whether anything visible changed.
    pub(crate) fn apply(&mut self, notice: &Notice) -> bool {
        let before = self.clone();
        match notice {
            Notice::Halted { node, reason } => {
                self.halted = Some((node.clone(), one_line(reason)));
            }
            Notice::HaltCleared => self.halted = None,
            Notice::AptRun { .. } => {}
            // Gate verdicts refine the words while pending; they do not
            // overwrite a later phase (a re-check right before draining).
            Notice::Waiting { blocked } => {
                self.blocked = blocked.clone();
                if matches!(self.phase, Phase::Pending | Phase::Idle | Phase::Soaking) {
                    self.detail = notice.summary();
                }
            }
            _ => {
                if let Some(phase) = notice.phase() {
                    self.phase = phase;
                }
                self.detail = notice.summary();
                self.step = match notice {
                    Notice::Upgrading { step, .. } | Notice::Failed { step, .. } => {
                        Some(one_line(step))
                    }
                    Notice::VerifyFailed { .. } => Some("verify".to_string()),
                    Notice::DrainFailed { .. } => Some("drain".to_string()),
                    _ => None,
                };
                match notice {
                    Notice::LeaseAcquired { slot } => self.slot = Some(slot.clone()),
                    Notice::Released | Notice::DrainFailed { .. } | Notice::Idle => {
                        self.slot = None
                    }
                    _ => {}
                }
                match notice {
                    Notice::Upgrading { from, to, step } => {
                        self.upgrade = Some((from.clone(), to.clone(), one_line(step)))
                    }
                    Notice::Released | Notice::Idle => self.upgrade = None,
                    _ => {}
                }
                if matches!(notice, Notice::Idle | Notice::LeaseAcquired { .. }) {
                    self.blocked.clear();
                }
            }
        }
        *self != before
    }

    /// The one line systemd shows in `systemctl status`.
    pub(crate) fn status_line(&self) -> String {
        let line = match &self.halted {
            Some((node, reason)) => format!(
                "{}: {} | cluster HALTED by {node}: {reason}",
                self.phase, self.detail
            ),
            None => format!("{}: {}", self.phase, self.detail),
        };
        status_text(&line)
    }

    /// The node annotation `drydock.dev/state-reason`.
    pub(crate) fn reason(&self) -> String {
        match &self.halted {
            Some((node, reason)) => truncate(
                &format!("{} (cluster halted by {node}: {reason})", self.detail),
                MAX_TEXT,
            ),
            None => self.detail.clone(),
        }
    }
}

/// STATUS= must stay one line and should stay short.
pub(crate) fn status_text(line: &str) -> String {
    truncate(&line.replace('\n', " "), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(g: &str, r: &str) -> BlockedGate {
        BlockedGate {
            gate: g.parse().unwrap(),
            reason: r.into(),
        }
    }

    #[test]
    fn status_follows_the_cycle() {
        let mut v = View::default();
        assert!(v.apply(&Notice::RebootNeeded {
            reasons: vec!["newer kernel installed".into()]
        }));
        assert_eq!(
            v.status_line(),
            "pending: reboot needed: newer kernel installed"
        );
        assert!(v.apply(&Notice::Waiting {
            blocked: vec![
                gate("window", "next window Tue 02:00 Europe/Berlin"),
                gate("nodes-ready", "node w2 NotReady")
            ]
        }));
        assert_eq!(
            v.status_line(),
            "pending: waiting for window: next window Tue 02:00 Europe/Berlin (and 1 more gate)"
        );
        // Same verdict again: nothing visible changes, so no new STATUS.
        assert!(!v.apply(&Notice::Waiting {
            blocked: vec![
                gate("window", "next window Tue 02:00 Europe/Berlin"),
                gate("nodes-ready", "node w2 NotReady")
            ]
        }));
        v.apply(&Notice::LeaseAcquired {
            slot: "drydock-default-0".into(),
        });
        v.apply(&Notice::Draining { pods_left: 1 });
        assert_eq!(v.status_line(), "draining: draining: 1 pod left");
        // A re-check of the gates while draining keeps the drain words.
        v.apply(&Notice::Waiting { blocked: vec![] });
        assert_eq!(v.phase, Phase::Draining);
        assert_eq!(v.status_line(), "draining: draining: 1 pod left");
        v.apply(&Notice::Halted {
            node: "w3".into(),
            reason: "kubelet not Ready\nafter reboot".into(),
        });
        assert_eq!(
            v.status_line(),
            "draining: draining: 1 pod left | cluster HALTED by w3: kubelet not Ready after reboot"
        );
        v.apply(&Notice::HaltCleared);
        assert!(!v.status_line().contains("HALTED"));
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(600);
        let mut v = View::default();
        v.apply(&Notice::VerifyFailed { reason });
        let line = v.status_line();
        assert!(line.len() <= 200, "{}", line.len());
        assert!(line.ends_with("..."));
        assert!(v.reason().len() <= MAX_TEXT);
    }

    #[test]
    fn events_and_webhooks_only_for_what_matters() {
        assert_eq!(Notice::Idle.event().unwrap().reason, "UpToDate");
        // Every phase has an event.
        for n in [
            Notice::Idle,
            Notice::RebootNeeded { reasons: vec![] },
            Notice::LeaseAcquired { slot: "s".into() },
            Notice::Draining { pods_left: 1 },
            Notice::Rebooting {
                boot_id: "b".into(),
            },
            Notice::Upgrading {
                from: "a".into(),
                to: "b".into(),
                step: "c".into(),
            },
            Notice::Verifying,
            Notice::Verified {
                durations: PhaseDurations::default(),
            },
            Notice::Released,
            Notice::Failed {
                step: "drain".into(),
                error: "e".into(),
            },
        ] {
            assert!(n.phase().is_some() && n.event().is_some(), "{n:?}");
        }
        // Every drain progress notice maps to the same event, so it is sent once.
        assert_eq!(
            Notice::Draining { pods_left: 3 }.event(),
            Notice::Draining { pods_left: 2 }.event()
        );
        let failed = Notice::VerifyFailed {
            reason: "kubelet not Ready after 15m".into(),
        };
        let ev = failed.event().unwrap();
        assert_eq!(ev.severity, Severity::Warning);
        assert_eq!((ev.reason, ev.action), ("VerifyFailed", "Verify"));
        assert!(ev.note.contains("kubelet not Ready after 15m"));
        let apt_ok = Notice::AptRun {
            changed: vec!["curl".into()],
            refused: vec![],
        };
        assert!(apt_ok.event().is_none());
        let apt_refused = Notice::AptRun {
            changed: vec![],
            refused: vec!["kubelet".into()],
        };
        assert_eq!(apt_refused.severity(), Severity::Warning);
    }

    #[test]
    fn drain_failure_lists_blockers_briefly() {
        let n = Notice::DrainFailed {
            reason: "timed out after 30m".into(),
            blocking_pods: (0..8).map(|i| format!("db/pg-{i}")).collect(),
        };
        let s = n.summary();
        assert!(
            s.contains("db/pg-0, db/pg-1, db/pg-2, db/pg-3, db/pg-4 and 3 more"),
            "{s}"
        );
        assert_eq!(n.phase(), Some(Phase::Pending));
    }

    #[test]
    fn webhook_json_shape() {
        let n = Notice::Verified {
            durations: PhaseDurations {
                drain: Some(Duration::from_millis(1500)),
                total: Some(Duration::from_secs(600)),
                ..Default::default()
            },
        };
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["event"], "verified");
        assert_eq!(v["durations"]["drain"], 1.5);
        assert!(v["durations"]["reboot"].is_null());
        assert_eq!(n.summary(), "verified healthy (10m in maintenance)");
    }
}
