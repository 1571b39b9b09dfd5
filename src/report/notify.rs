//! Chat and webhook notifications: a Slack incoming webhook (`{"text": ...}`)
//! and a generic JSON webhook. Posting runs in a background task behind a
//! bounded queue: it never blocks or fails the agent. Webhook URLs carry
//! tokens: only their host ever reaches a log line or an error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::notice::{Notice, Severity};
use crate::config::values::{TemplatePart, redact_url};
use crate::config::{ReportSettings, Secret};

/// How hard to try one post.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Per request (connect + response).
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: Duration::from_secs(10),
            retries: 3,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The message never carries the URL's path (`reqwest::Error::without_url`).
    #[error("posting {what} notification to {host}: {source}")]
    Send {
        what: &'static str,
        host: String,
        source: reqwest::Error,
    },
    #[error("posting {what} notification to {host}: server answered {status}")]
    Status {
        what: &'static str,
        host: String,
        status: reqwest::StatusCode,
    },
    #[error("building the HTTP client for notifications: {0}")]
    Client(reqwest::Error),
}

impl NotifyError {
    /// Timeouts, connection errors, 429 and 5xx may pass; other answers will not.
    fn is_retryable(&self) -> bool {
        match self {
            NotifyError::Send { .. } => true,
            NotifyError::Status { status, .. } => {
                status.is_server_error() || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            NotifyError::Client(_) => false,
        }
    }
}

type Templates = BTreeMap<String, Vec<TemplatePart>>;

/// Fills a template's placeholders.
pub(crate) fn render(
    template: &[TemplatePart],
    node: &str,
    notice: &Notice,
    at: Timestamp,
) -> String {
    let mut out = String::new();
    for part in template {
        match part {
            TemplatePart::Text(t) => out.push_str(t),
            TemplatePart::Field("node") => out.push_str(node),
            TemplatePart::Field("event") => out.push_str(notice.kind()),
            TemplatePart::Field("severity") => out.push_str(notice.severity().as_str()),
            TemplatePart::Field("message") => out.push_str(&notice.summary()),
            TemplatePart::Field("time") => out.push_str(&at.to_string()),
            TemplatePart::Field(_) => {}
        }
    }
    out
}

/// The Slack message for a notice (`template`: the configured one for its kind).
fn slack_body(
    node: &str,
    notice: &Notice,
    at: Timestamp,
    template: Option<&[TemplatePart]>,
) -> Value {
    let text = match template {
        Some(t) => render(t, node, notice, at),
        None => {
            let icon = match notice.severity() {
                Severity::Warning => ":warning: ",
                Severity::Normal => "",
            };
            format!("{icon}drydock on `{node}`: {}", notice.summary())
        }
    };
    // Control characters escaped; Slack reads <...> as links and mentions
    // (`<!channel>`): escaped as its documentation asks.
    let text = crate::text::display(&text, 2000)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    json!({ "text": text })
}

/// The generic webhook body: stable top-level fields plus the notice itself.
fn webhook_body(
    node: &str,
    notice: &Notice,
    at: Timestamp,
    template: Option<&[TemplatePart]>,
) -> Value {
    json!({
        "source": "drydock",
        "node": node,
        "event": notice.kind(),
        "severity": notice.severity().as_str(),
        "message": crate::text::display(
            &template.map_or_else(|| notice.summary(), |t| render(t, node, notice, at)),
            2000
        ),
        "time": at.to_string(),
        "details": notice,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiverKind {
    Slack,
    Webhook,
}

impl ReceiverKind {
    fn as_str(self) -> &'static str {
        match self {
            ReceiverKind::Slack => "Slack",
            ReceiverKind::Webhook => "webhook",
        }
    }
}

/// One place notifications go. Each receiver has its own queue and task,
/// so a dead one delays nobody else.
#[derive(Debug, Clone)]
pub(crate) struct Receiver {
    kind: ReceiverKind,
    url: Secret,
    events: BTreeSet<String>,
    templates: Arc<Templates>,
    client: reqwest::Client,
    node: String,
    policy: RetryPolicy,
}

/// The receivers configured in `[report]` (none when no URL is set).
pub(crate) fn receivers(
    node: &str,
    report: &ReportSettings,
    policy: RetryPolicy,
) -> Result<Vec<Receiver>, NotifyError> {
    let configured = [
        (
            ReceiverKind::Slack,
            &report.slack_webhook_url,
            &report.slack_events,
        ),
        (
            ReceiverKind::Webhook,
            &report.webhook_url,
            &report.webhook_events,
        ),
    ];
    if configured.iter().all(|(_, url, _)| url.is_none()) {
        return Ok(Vec::new());
    }
    let client = reqwest::Client::builder()
        .timeout(policy.timeout)
        .connect_timeout(policy.timeout)
        .user_agent(concat!("drydock/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| NotifyError::Client(e.without_url()))?;
    let templates = Arc::new(report.templates.clone());
    Ok(configured
        .into_iter()
        .filter_map(|(kind, url, events)| {
            Some(Receiver {
                kind,
                url: url.clone()?,
                events: events.iter().cloned().collect(),
                templates: templates.clone(),
                client: client.clone(),
                node: node.to_string(),
                policy,
            })
        })
        .collect())
}

impl Receiver {
    /// Whether this receiver is told about `notice`.
    pub(crate) fn wants(&self, notice: &Notice) -> bool {
        // An apt run is news only when it refused something.
        let news = !matches!(notice, Notice::AptRun { refused, .. } if refused.is_empty());
        news && self.events.contains(notice.kind())
    }

    /// The scheme and host only: what logs and errors may show.
    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.kind.as_str(), redact_url(self.url.expose()))
    }

    pub(crate) fn body(&self, notice: &Notice, at: Timestamp) -> Value {
        let template = self.templates.get(notice.kind()).map(Vec::as_slice);
        match self.kind {
            ReceiverKind::Slack => slack_body(&self.node, notice, at, template),
            ReceiverKind::Webhook => webhook_body(&self.node, notice, at, template),
        }
    }

    /// Posts one notice (with retries); a failure is logged (host only)
    /// and returned for tests, never raised to the agent.
    pub(crate) async fn send(&self, notice: &Notice, at: Timestamp) -> Result<(), NotifyError> {
        let result = self.post(&self.body(notice, at)).await;
        if let Err(e) = &result {
            warn!(event = notice.kind(), error = %e, "notification not delivered");
        }
        result
    }

    async fn post(&self, body: &Value) -> Result<(), NotifyError> {
        let what = self.kind.as_str();
        let host = redact_url(self.url.expose());
        let attempt = || async {
            let response = self
                .client
                .post(self.url.expose())
                .json(body)
                .send()
                .await
                .map_err(|e| NotifyError::Send {
                    what,
                    host: host.clone(),
                    source: e.without_url(),
                })?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(NotifyError::Status {
                    what,
                    host: host.clone(),
                    status,
                })
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_delay)
            .with_max_delay(self.policy.max_delay)
            .with_max_times(self.policy.retries)
            .with_jitter();
        attempt
            .retry(backoff)
            .when(NotifyError::is_retryable)
            .notify(|e, wait| debug!(error = %e, retry_in = ?wait, "retrying notification"))
            .await?;
        debug!(what, host = %host, "notification delivered");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let n = Notice::VerifyFailed {
            reason: "kubelet not Ready".into(),
        };
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let s = slack_body("w1", &n, at, None);
        assert_eq!(
            s["text"],
            ":warning: drydock on `w1`: verification FAILED: kubelet not Ready; node stays cordoned and keeps the lease (fleet halted)"
        );
        let w = webhook_body("w1", &n, at, None);
        assert_eq!(w["event"], "verify-failed");
        assert_eq!(w["severity"], "Warning");
        assert_eq!(w["details"]["reason"], "kubelet not Ready");
        assert_eq!(w["time"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn templates_per_event_kind() {
        let mut report = crate::config::Settings::default().report;
        report.slack_webhook_url = Some(Secret::new("https://hooks.example/T/SECRET".into()));
        report.webhook_url = Some(Secret::new("https://other.example/SECRET".into()));
        report.webhook_events = vec!["halted".into()];
        report.templates.insert(
            "verify-failed".into(),
            crate::config::values::message_template(
                ":rotating_light: {node} [{severity}] {message} at {time}",
            )
            .unwrap(),
        );
        let rs = receivers("w1", &report, RetryPolicy::default()).unwrap();
        let (slack, hook) = (&rs[0], &rs[1]);
        let failed = Notice::VerifyFailed {
            reason: "kubelet not Ready".into(),
        };
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        assert!(slack.wants(&failed) && !hook.wants(&failed));
        assert_eq!(
            slack.body(&failed, at)["text"],
            ":rotating_light: w1 [Warning] verification FAILED: kubelet not Ready; node stays cordoned and keeps the lease (fleet halted) at 2023-11-14T22:13:20Z"
        );
        let halted = Notice::Halted {
            node: "w2".into(),
            reason: "x".into(),
        };
        assert!(hook.wants(&halted));
        assert_eq!(hook.body(&halted, at)["message"], "cluster HALTED by w2: x");
        // Defaults: progress and trouble, never chatter.
        assert!(!slack.wants(&Notice::Draining { pods_left: 1 }));
        assert!(!slack.wants(&Notice::AptRun {
            changed: vec!["curl".into()],
            refused: vec![]
        }));
        assert!(slack.wants(&Notice::AptRun {
            changed: vec![],
            refused: vec!["kubelet".into()]
        }));
        assert_eq!(slack.describe(), "Slack https://hooks.example/...");
        assert!(!format!("{slack:?}").contains("SECRET"));
    }

    #[test]
    fn every_notifiable_kind_is_a_notice_kind() {
        let kinds: BTreeSet<&str> = [
            Notice::Idle,
            Notice::RebootNeeded { reasons: vec![] },
            Notice::LeaseAcquired { slot: "s".into() },
            Notice::DrainFailed {
                reason: "r".into(),
                blocking_pods: vec![],
            },
            Notice::Drained {
                summary: "s".into(),
                forced: false,
            },
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
                durations: Default::default(),
            },
            Notice::VerifyFailed { reason: "r".into() },
            Notice::Released,
            Notice::Halted {
                node: "n".into(),
                reason: "r".into(),
            },
            Notice::HaltCleared,
            Notice::Failed {
                step: "s".into(),
                error: "e".into(),
            },
            Notice::AptRun {
                changed: vec![],
                refused: vec![],
            },
        ]
        .iter()
        .map(Notice::kind)
        .collect();
        for k in crate::config::values::NOTIFY_EVENT_KINDS {
            assert!(kinds.contains(k), "{k}");
        }
    }

    #[test]
    fn errors_name_the_host_only() {
        let e = NotifyError::Status {
            what: "Slack",
            host: redact_url("https://hooks.example/services/T0/B0/SECRET"),
            status: reqwest::StatusCode::BAD_GATEWAY,
        };
        let text = e.to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("https://hooks.example/..."), "{text}");
        assert!(e.is_retryable());
    }
}
