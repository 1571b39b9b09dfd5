//! Chat and webhook notifications: a Slack incoming webhook (`{"text": ...}`)
//! and a generic JSON webhook. Posting runs in a background task behind a
//! bounded queue: it never blocks or fails the agent. Webhook URLs carry
//! tokens: only their host ever reaches a log line or an error.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::notice::{Notice, Severity};
use crate::config::Secret;
use crate::config::values::redact_url;

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

/// The Slack message for a notice.
pub fn slack_body(node: &str, notice: &Notice) -> Value {
    let icon = match notice.severity() {
        Severity::Warning => ":warning: ",
        Severity::Normal => "",
    };
    // Slack reads <...> as links and mentions (`<!channel>`): escaped as
    // its documentation asks, after control characters.
    let summary = crate::text::display(&notice.summary(), 2000)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    json!({ "text": format!("{icon}drydock on `{node}`: {summary}") })
}

/// The generic webhook body: stable top-level fields plus the notice itself.
pub fn webhook_body(node: &str, notice: &Notice, at: Timestamp) -> Value {
    json!({
        "source": "drydock",
        "node": node,
        "event": notice.kind(),
        "severity": notice.severity().as_str(),
        "message": crate::text::display(&notice.summary(), 2000),
        "time": at.to_string(),
        "details": notice,
    })
}

/// Posts notable notices to the configured webhooks.
#[derive(Debug, Clone)]
pub struct Webhooks {
    client: reqwest::Client,
    slack: Option<Secret>,
    generic: Option<Secret>,
    node: String,
    policy: RetryPolicy,
}

impl Webhooks {
    /// `None` when no webhook is configured.
    pub fn new(
        node: &str,
        slack: Option<Secret>,
        generic: Option<Secret>,
        policy: RetryPolicy,
    ) -> Result<Option<Webhooks>, NotifyError> {
        if slack.is_none() && generic.is_none() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .user_agent(concat!("drydock/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.without_url()))?;
        Ok(Some(Webhooks {
            client,
            slack,
            generic,
            node: node.to_string(),
            policy,
        }))
    }

    /// Sends one notice to every configured webhook; failures are logged
    /// (host only) and returned for tests, never raised to the agent.
    pub async fn send(&self, notice: &Notice, at: Timestamp) -> Vec<NotifyError> {
        let mut errors = Vec::new();
        if let Some(url) = &self.slack {
            let body = slack_body(&self.node, notice);
            if let Err(e) = self.post("Slack", url, &body).await {
                errors.push(e);
            }
        }
        if let Some(url) = &self.generic {
            let body = webhook_body(&self.node, notice, at);
            if let Err(e) = self.post("webhook", url, &body).await {
                errors.push(e);
            }
        }
        for e in &errors {
            warn!(event = notice.kind(), error = %e, "notification not delivered");
        }
        errors
    }

    async fn post(
        &self,
        what: &'static str,
        url: &Secret,
        body: &Value,
    ) -> Result<(), NotifyError> {
        let host = redact_url(url.expose());
        let attempt = || async {
            let response = self
                .client
                .post(url.expose())
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
        let s = slack_body("w1", &n);
        assert_eq!(
            s["text"],
            ":warning: drydock on `w1`: verification FAILED: kubelet not Ready; node stays cordoned and keeps the lease (fleet halted)"
        );
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let w = webhook_body("w1", &n, at);
        assert_eq!(w["event"], "verify-failed");
        assert_eq!(w["severity"], "Warning");
        assert_eq!(w["details"]["reason"], "kubelet not Ready");
        assert_eq!(w["time"], "2023-11-14T22:13:20Z");
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
