//! Firing alerts block. Reads Alertmanager `/api/v2/alerts` (active, not
//! silenced, not inhibited) when `alerts.alertmanager-url` is set, because
//! only Alertmanager knows silences; otherwise Prometheus `/api/v1/alerts`
//! (state "firing"). Alerts whose name matches `alerts.ignore` do not count;
//! with `alerts.match-only`, only alerts whose name matches it count. Both
//! regexes are applied here, unanchored, rather than sent as Alertmanager's
//! `filter` (which anchors its regexes, so the meaning would change).
//!
//! Fetching is I/O ([`fetch`]); deciding is pure ([`evaluate`]). A source
//! that cannot be read blocks: drydock fails closed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::{Verdict, list_names};
use crate::config::AlertSettings;

pub(crate) const NAME: &str = super::GateName::Alerts.as_str();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Prometheus,
    Alertmanager,
}

/// Where alerts are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSource {
    pub kind: SourceKind,
    /// Base URL as configured (may carry credentials: use Display to show it).
    pub url: String,
}

impl AlertSource {
    /// The alerts endpoint, with the query parameters the API defines.
    pub(crate) fn endpoint(&self) -> String {
        let base = self.url.trim_end_matches('/');
        match self.kind {
            SourceKind::Prometheus => format!("{base}/api/v1/alerts"),
            SourceKind::Alertmanager => {
                format!("{base}/api/v2/alerts?active=true&silenced=false&inhibited=false")
            }
        }
    }
}

/// `prometheus at http://host:9090`, without any user:password.
impl fmt::Display for AlertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            SourceKind::Prometheus => "prometheus",
            SourceKind::Alertmanager => "alertmanager",
        };
        let url = match self.url.split_once("://") {
            Some((scheme, rest)) => {
                let host_end = rest.find('/').unwrap_or(rest.len());
                let host = &rest[..host_end];
                let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
                format!("{scheme}://{host}{}", &rest[host_end..])
            }
            None => self.url.clone(),
        };
        write!(f, "{kind} at {url}")
    }
}

/// One active alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertObservation {
    /// No Prometheus or Alertmanager configured: the gate passes.
    NotConfigured,
    Fetched {
        source: AlertSource,
        /// Firing (Prometheus) or active, unsilenced, uninhibited
        /// (Alertmanager) alerts, before the ignore/match-only filters.
        alerts: Vec<Alert>,
    },
    Unavailable {
        source: AlertSource,
        /// e.g. "unreachable: connection refused".
        error: String,
    },
}

/// The configured source; Alertmanager wins when both are set.
pub(crate) fn source(settings: &AlertSettings) -> Option<AlertSource> {
    if let Some(url) = &settings.alertmanager_url {
        return Some(AlertSource {
            kind: SourceKind::Alertmanager,
            url: url.clone(),
        });
    }
    settings.prometheus_url.as_ref().map(|url| AlertSource {
        kind: SourceKind::Prometheus,
        url: url.clone(),
    })
}

/// Reads the active alerts, within `alerts.timeout`.
pub async fn fetch(settings: &AlertSettings) -> AlertObservation {
    let Some(source) = source(settings) else {
        return AlertObservation::NotConfigured;
    };
    match fetch_from(&source, settings.timeout).await {
        Ok(alerts) => AlertObservation::Fetched { source, alerts },
        Err(error) => AlertObservation::Unavailable { source, error },
    }
}

async fn fetch_from(
    source: &AlertSource,
    timeout: std::time::Duration,
) -> Result<Vec<Alert>, String> {
    let unreachable = |e: reqwest::Error| {
        if e.is_timeout() {
            format!(
                "unreachable: no answer within {}",
                humantime::format_duration(timeout)
            )
        } else {
            format!("unreachable: {}", cause(&e))
        }
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build HTTP client: {}", cause(&e)))?;
    let response = client
        .get(source.endpoint())
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body = response.bytes().await.map_err(unreachable)?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.trim().chars().take(200).collect();
        return Err(format!("answered HTTP {status}: {text}"));
    }
    match source.kind {
        SourceKind::Prometheus => parse_prometheus(&body),
        SourceKind::Alertmanager => parse_alertmanager(&body),
    }
    .map_err(|e| format!("unusable answer: {e}"))
}

/// The innermost cause of an error ("Connection refused (os error 111)"),
/// without the URL that reqwest's outer message repeats.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[derive(Deserialize)]
struct PromResponse {
    status: String,
    #[serde(default)]
    data: Option<PromData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct PromData {
    alerts: Vec<PromAlert>,
}

#[derive(Deserialize)]
struct PromAlert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    state: String,
}

/// Prometheus `/api/v1/alerts`: the alerts in state "firing".
fn parse_prometheus(body: &[u8]) -> Result<Vec<Alert>, String> {
    let r: PromResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if r.status != "success" {
        return Err(format!(
            "status {:?}: {} {}",
            r.status,
            r.error_type.unwrap_or_default(),
            r.error.unwrap_or_default()
        ));
    }
    let data = r.data.ok_or("status success but no data")?;
    Ok(data
        .alerts
        .into_iter()
        .filter(|a| a.state == "firing")
        .map(|a| alert(a.labels))
        .collect())
}

#[derive(Deserialize)]
struct AmAlert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    status: AmStatus,
}

#[derive(Deserialize)]
struct AmStatus {
    state: String,
    #[serde(default, rename = "silencedBy")]
    silenced_by: Vec<String>,
    #[serde(default, rename = "inhibitedBy")]
    inhibited_by: Vec<String>,
}

/// Alertmanager `/api/v2/alerts`: active, not silenced, not inhibited.
/// The query already asks for that; checked again in case a proxy or an
/// old version ignores the parameters. "unprocessed" alerts count (fail
/// closed: they are new and not yet routed).
fn parse_alertmanager(body: &[u8]) -> Result<Vec<Alert>, String> {
    let alerts: Vec<AmAlert> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(alerts
        .into_iter()
        .filter(|a| {
            a.status.state != "suppressed"
                && a.status.silenced_by.is_empty()
                && a.status.inhibited_by.is_empty()
        })
        .map(|a| alert(a.labels))
        .collect())
}

fn alert(labels: BTreeMap<String, String>) -> Alert {
    Alert {
        name: labels
            .get("alertname")
            .cloned()
            .unwrap_or_else(|| "<no alertname>".into()),
        labels,
    }
}

/// The alerts that block, by name (sorted, unique).
fn blocking_alerts(settings: &AlertSettings, alerts: &[Alert]) -> Vec<String> {
    let mut names: Vec<String> = alerts
        .iter()
        .filter(|a| !settings.ignore.is_match(&a.name))
        .filter(|a| {
            settings
                .match_only
                .as_ref()
                .is_none_or(|re| re.is_match(&a.name))
        })
        .map(|a| a.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

pub fn evaluate(settings: &AlertSettings, observation: &AlertObservation) -> Verdict {
    match observation {
        AlertObservation::NotConfigured => Verdict::Pass,
        AlertObservation::Unavailable { source, error } => {
            Verdict::Block(format!("alerts: {source} {error}"))
        }
        AlertObservation::Fetched { alerts, .. } => {
            let names = blocking_alerts(settings, alerts);
            match names.as_slice() {
                [] => Verdict::Pass,
                [one] => Verdict::Block(format!("alert {one} firing")),
                many => Verdict::Block(format!(
                    "{} alerts firing: {}",
                    many.len(),
                    list_names(many.iter().map(String::as_str))
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use regex::Regex;

    fn settings() -> AlertSettings {
        Settings::default().alerts
    }

    fn named(names: &[&str]) -> Vec<Alert> {
        names
            .iter()
            .map(|n| alert([("alertname".to_string(), n.to_string())].into()))
            .collect()
    }

    fn fetched(names: &[&str]) -> AlertObservation {
        AlertObservation::Fetched {
            source: AlertSource {
                kind: SourceKind::Prometheus,
                url: "http://prom:9090".into(),
            },
            alerts: named(names),
        }
    }

    #[test]
    fn no_source_passes_and_alertmanager_wins() {
        let mut s = settings();
        assert_eq!(source(&s), None);
        assert_eq!(
            evaluate(&s, &AlertObservation::NotConfigured),
            Verdict::Pass
        );
        s.prometheus_url = Some("http://prom:9090/".into());
        assert_eq!(
            source(&s).unwrap().endpoint(),
            "http://prom:9090/api/v1/alerts"
        );
        s.alertmanager_url = Some("http://am:9093/am".into());
        assert_eq!(
            source(&s).unwrap().endpoint(),
            "http://am:9093/am/api/v2/alerts?active=true&silenced=false&inhibited=false"
        );
    }

    #[test]
    fn firing_alerts_block_unless_ignored() {
        let s = settings();
        assert_eq!(evaluate(&s, &fetched(&[])), Verdict::Pass);
        // Default ignore: Watchdog and InfoInhibitor always fire.
        assert_eq!(
            evaluate(&s, &fetched(&["Watchdog", "InfoInhibitor"])),
            Verdict::Pass
        );
        assert_eq!(
            evaluate(&s, &fetched(&["Watchdog", "NodeDiskPressure"])),
            Verdict::Block("alert NodeDiskPressure firing".into())
        );
        assert_eq!(
            evaluate(&s, &fetched(&["B", "A", "B"])),
            Verdict::Block("2 alerts firing: A, B".into())
        );
    }

    #[test]
    fn match_only_limits_what_counts() {
        let mut s = settings();
        s.match_only = Some(Regex::new("^Node").unwrap());
        assert_eq!(
            evaluate(&s, &fetched(&["KubePodCrashLooping"])),
            Verdict::Pass
        );
        assert_eq!(
            evaluate(&s, &fetched(&["KubePodCrashLooping", "NodeDown"])),
            Verdict::Block("alert NodeDown firing".into())
        );
        // Ignore still applies inside match-only.
        s.ignore = Regex::new("Down$").unwrap().into();
        assert_eq!(evaluate(&s, &fetched(&["NodeDown"])), Verdict::Pass);
    }

    #[test]
    fn unavailable_source_blocks_without_credentials() {
        let obs = AlertObservation::Unavailable {
            source: AlertSource {
                kind: SourceKind::Prometheus,
                url: "https://user:secret@prom.example/prometheus".into(),
            },
            error: "unreachable: Connection refused (os error 111)".into(),
        };
        assert_eq!(
            evaluate(&settings(), &obs),
            Verdict::Block(
                "alerts: prometheus at https://prom.example/prometheus unreachable: Connection refused (os error 111)"
                    .into()
            )
        );
    }

    #[test]
    fn prometheus_answer_is_parsed() {
        // Shape of a real Prometheus 2.x /api/v1/alerts answer.
        let body = br#"{"status":"success","data":{"alerts":[
            {"labels":{"alertname":"AlwaysFiring","severity":"none"},"annotations":{},
             "state":"firing","activeAt":"2025-01-01T00:00:00.1Z","value":"1e+00"},
            {"labels":{"alertname":"Slow"},"annotations":{},"state":"pending",
             "activeAt":"2025-01-01T00:00:00Z","value":"1e+00"}]}}"#;
        let alerts = parse_prometheus(body).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].name, "AlwaysFiring");
        assert_eq!(alerts[0].labels["severity"], "none");
        let err = parse_prometheus(br#"{"status":"error","errorType":"bad_data","error":"x"}"#)
            .unwrap_err();
        assert!(err.contains("bad_data"), "{err}");
        assert!(parse_prometheus(b"<html>").is_err());
    }

    #[test]
    fn alertmanager_answer_is_parsed() {
        let body = br#"[
          {"annotations":{},"endsAt":"2025-01-01T01:00:00Z","fingerprint":"a1",
           "receivers":[{"name":"null"}],"startsAt":"2025-01-01T00:00:00Z",
           "status":{"inhibitedBy":[],"silencedBy":[],"state":"active"},
           "updatedAt":"2025-01-01T00:00:00Z","generatorURL":"http://p/graph",
           "labels":{"alertname":"NodeDown","instance":"n1"}},
          {"annotations":{},"endsAt":"2025-01-01T01:00:00Z","fingerprint":"a2",
           "receivers":[{"name":"null"}],"startsAt":"2025-01-01T00:00:00Z",
           "status":{"inhibitedBy":[],"silencedBy":["s1"],"state":"suppressed"},
           "updatedAt":"2025-01-01T00:00:00Z","labels":{"alertname":"Silenced"}}
        ]"#;
        let alerts = parse_alertmanager(body).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].name, "NodeDown");
        assert!(parse_alertmanager(br#"{"status":"success"}"#).is_err());
    }
}
