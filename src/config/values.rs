//! Parsers for single configuration values. Each error says what was
//! expected, so the message stands on its own next to the file position.

use std::time::Duration;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use regex::Regex;

use super::settings::NamespacedName;

#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("invalid duration {0:?}: expected a duration like \"90s\", \"30m\" or \"24h\"")]
    Duration(String),
    #[error("unknown time zone {0:?}: expected an IANA name like \"Europe/London\" or \"UTC\"")]
    TimeZone(String),
    #[error("invalid time of day {0:?}: expected \"HH:MM\" (24-hour clock)")]
    TimeOfDay(String),
    #[error("invalid day {0:?}: expected one of mon, tue, wed, thu, fri, sat, sun")]
    Weekday(String),
    #[error("a maintenance window needs at least one day")]
    NoDays,
    #[error("invalid window length {0:?}: expected more than 0 and at most 7 days")]
    WindowLength(String),
    #[error("invalid regular expression {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("invalid package pattern {pattern:?}: {reason}")]
    PackagePattern { pattern: String, reason: String },
    #[error(
        "invalid name {0:?}: expected a lowercase DNS name (letters, digits, '-', at most 63 characters per part)"
    )]
    DnsName(String),
    #[error(
        "invalid label selector {0:?}: expected terms like \"key=value\", \"key!=value\", \"key in (a,b)\", \"key\" or \"!key\", separated by commas"
    )]
    LabelSelector(String),
    #[error("a blocking-pod selector must not be empty (it would match every pod)")]
    EmptySelector,
    #[error("invalid DaemonSet reference {0:?}: expected \"namespace/name\"")]
    NamespacedName(String),
    #[error("invalid URL {0:?}: expected an http:// or https:// URL")]
    Url(String),
    #[error("invalid listen address {0:?}: expected \"IP:PORT\" like \"127.0.0.1:9742\"")]
    SocketAddr(String),
    #[error("{value} is out of range: expected a whole number from {min} to {max}")]
    Range { value: i64, min: i64, max: i64 },
    #[error("invalid command: expected a non-empty list whose first element is an absolute path")]
    Argv,
    #[error("unknown event kind {0:?}: expected one of {kinds}", kinds = NOTIFY_EVENT_KINDS.join(", "))]
    EventKind(String),
    #[error(
        "invalid message template: {0}; placeholders are {{node}}, {{event}}, {{severity}}, {{message}}, {{time}} ({{{{ and }}}} for braces)"
    )]
    Template(String),
}

/// Event kinds a notification can be sent for (`Notice::kind`). Gate
/// re-evaluations and drain progress are left out: too chatty for chat;
/// `drydock status` and the Events show them.
pub const NOTIFY_EVENT_KINDS: &[&str] = &[
    "idle",
    "reboot-needed",
    "lease-acquired",
    "drain-failed",
    "drained",
    "rebooting",
    "upgrading",
    "verifying",
    "verified",
    "verify-failed",
    "released",
    "halted",
    "halt-cleared",
    "failed",
    "apt-run",
];

/// What is sent when nothing is configured: progress and trouble.
pub const DEFAULT_NOTIFY_EVENTS: &[&str] = &[
    "drain-failed",
    "rebooting",
    "upgrading",
    "verified",
    "verify-failed",
    "halted",
    "halt-cleared",
    "failed",
    "apt-run",
];

/// Placeholders a message template may use.
pub const TEMPLATE_FIELDS: &[&str] = &["node", "event", "severity", "message", "time"];

pub fn event_kind(s: &str) -> Result<String, ValueError> {
    NOTIFY_EVENT_KINDS
        .iter()
        .find(|k| **k == s)
        .map(|k| k.to_string())
        .ok_or_else(|| ValueError::EventKind(s.chars().take(64).collect()))
}

/// A template split into literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Text(String),
    Field(&'static str),
}

/// Parses `"{node}: {message}"`; `{{` and `}}` are literal braces.
pub fn message_template(s: &str) -> Result<Vec<TemplatePart>, ValueError> {
    if s.len() > 2000 {
        return Err(ValueError::Template("longer than 2000 bytes".into()));
    }
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    return Err(ValueError::Template("a '{' without its '}'".into()));
                }
                let field = TEMPLATE_FIELDS
                    .iter()
                    .find(|f| **f == name)
                    .ok_or_else(|| {
                        ValueError::Template(format!(
                            "unknown placeholder {{{}}}",
                            name.chars().take(40).collect::<String>()
                        ))
                    })?;
                if !text.is_empty() {
                    parts.push(TemplatePart::Text(std::mem::take(&mut text)));
                }
                parts.push(TemplatePart::Field(field));
            }
            '}' => return Err(ValueError::Template("a lone '}'".into())),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(TemplatePart::Text(text));
    }
    Ok(parts)
}

pub fn duration(text: &str) -> Result<Duration, ValueError> {
    humantime::parse_duration(text.trim()).map_err(|_| ValueError::Duration(text.to_string()))
}

pub fn time_zone(name: &str) -> Result<TimeZone, ValueError> {
    TimeZone::get(name).map_err(|_| ValueError::TimeZone(name.to_string()))
}

pub fn time_of_day(text: &str) -> Result<Time, ValueError> {
    let bad = || ValueError::TimeOfDay(text.to_string());
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let hour: i8 = h.parse().map_err(|_| bad())?;
    let minute: i8 = m.parse().map_err(|_| bad())?;
    Time::new(hour, minute, 0, 0).map_err(|_| bad())
}

pub fn weekday(text: &str) -> Result<Weekday, ValueError> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return Err(ValueError::Weekday(text.to_string())),
    })
}

pub fn regex(pattern: &str) -> Result<Regex, ValueError> {
    Regex::new(pattern).map_err(|e| ValueError::Regex {
        pattern: pattern.to_string(),
        reason: e.to_string().lines().last().unwrap_or_default().to_string(),
    })
}

pub fn package_pattern(pattern: &str) -> Result<glob::Pattern, ValueError> {
    let valid_chars = pattern
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.*?[]!".contains(c));
    if pattern.is_empty() || !valid_chars {
        return Err(ValueError::PackagePattern {
            pattern: pattern.to_string(),
            reason: "Debian package names use a-z, 0-9, '+', '-', '.'; globs add '*', '?', '[...]'"
                .into(),
        });
    }
    glob::Pattern::new(pattern).map_err(|e| ValueError::PackagePattern {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn dns_label(s: &str) -> Result<String, ValueError> {
    if is_dns_label(s) {
        Ok(s.to_string())
    } else {
        Err(ValueError::DnsName(s.to_string()))
    }
}

pub fn dns_subdomain(s: &str) -> Result<String, ValueError> {
    if s.len() <= 253 && s.split('.').all(is_dns_label) {
        Ok(s.to_string())
    } else {
        Err(ValueError::DnsName(s.to_string()))
    }
}

pub fn namespaced_name(s: &str) -> Result<NamespacedName, ValueError> {
    let bad = || ValueError::NamespacedName(s.to_string());
    let (ns, name) = s.split_once('/').ok_or_else(bad)?;
    Ok(NamespacedName {
        namespace: dns_label(ns).map_err(|_| bad())?,
        name: dns_subdomain(name).map_err(|_| bad())?,
    })
}

/// Checks the syntax of a Kubernetes label selector; the API server applies it.
pub fn label_selector(s: &str) -> Result<String, ValueError> {
    let key =
        r"([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?";
    let value = r"([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?)?";
    let term = format!(
        r"^\s*(!?\s*{key}|{key}\s*(=|==|!=)\s*{value}|{key}\s+(in|notin)\s*\(\s*{value}(\s*,\s*{value})*\s*\))\s*$"
    );
    let term = Regex::new(&term).expect("selector grammar is a valid regex");
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    // Commas inside "(a,b)" belong to the set, not the term list.
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    if depth == 0 && terms.iter().all(|t| term.is_match(t)) {
        Ok(s.trim().to_string())
    } else {
        Err(ValueError::LabelSelector(s.to_string()))
    }
}

pub fn http_url(s: String) -> Result<String, ValueError> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(s),
        _ => Err(ValueError::Url(redact_url(&s))),
    }
}

/// Keeps the scheme and host of a URL that may carry a token in its path,
/// query or user information: `https://hooks.slack.com/...`.
pub fn redact_url(s: &str) -> String {
    match s.find("://") {
        Some(i) => {
            let after = &s[i + 3..];
            let authority = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
            // `user:token@host`: the user part is a secret too.
            let host = authority.rsplit('@').next().unwrap_or_default();
            format!("{}://{host}/...", &s[..i])
        }
        None => "<redacted>".to_string(),
    }
}

pub fn socket_addr(s: &str) -> Result<std::net::SocketAddr, ValueError> {
    s.parse().map_err(|_| ValueError::SocketAddr(s.to_string()))
}

pub fn bounded_count(value: i64, min: i64, max: i64) -> Result<u32, ValueError> {
    if (min..=max).contains(&value) {
        Ok(value as u32)
    } else {
        Err(ValueError::Range { value, min, max })
    }
}

pub fn argv(argv: Vec<String>) -> Result<Vec<String>, ValueError> {
    match argv.first() {
        None => Ok(argv),
        Some(program) if program.starts_with('/') => Ok(argv),
        Some(_) => Err(ValueError::Argv),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_keep_only_scheme_and_host() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T0/B0/SECRET",
                "https://hooks.slack.com/...",
            ),
            (
                "https://hooks.example?token=SECRET",
                "https://hooks.example/...",
            ),
            (
                "https://user:SECRET@hooks.example/x",
                "https://hooks.example/...",
            ),
            ("http://[::1]:8080#SECRET", "http://[::1]:8080/..."),
            ("SECRET", "<redacted>"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        let e = http_url("ftp://hooks/SECRET".into())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn message_templates() {
        assert_eq!(
            message_template("{{x}} {node}: {message}").unwrap(),
            [
                TemplatePart::Text("{x} ".into()),
                TemplatePart::Field("node"),
                TemplatePart::Text(": ".into()),
                TemplatePart::Field("message"),
            ]
        );
        for bad in ["{nod}", "{node", "a } b", "{}", &"x".repeat(3000)] {
            let e = message_template(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid message template"), "{bad}: {e}");
        }
        assert!(event_kind("verify-failed").is_ok());
        assert!(event_kind("draining").is_err());
    }

    #[test]
    fn durations_are_humane() {
        assert_eq!(duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(duration("soon").is_err());
        assert!(duration("").is_err());
        assert!(duration("10").is_err());
    }

    #[test]
    fn selectors() {
        for ok in [
            "",
            "a=b",
            "app.kubernetes.io/name=x,tier!=db",
            "k in (a, b),!gone",
            "env notin (prod)",
            "k",
        ] {
            assert!(label_selector(ok).is_ok(), "{ok}");
        }
        for bad in ["=b", "a=b,", "k in (a", "a b", "a=b=c", "$x"] {
            assert!(label_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_and_days() {
        assert_eq!(
            time_of_day("02:30").unwrap(),
            Time::new(2, 30, 0, 0).unwrap()
        );
        for bad in ["2:30", "24:00", "02:60", "0230", "ab:cd"] {
            assert!(time_of_day(bad).is_err(), "{bad}");
        }
        assert_eq!(weekday("Tue").unwrap(), Weekday::Tuesday);
        assert!(weekday("tues").is_err());
    }

    #[test]
    fn urls_redact_tokens() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/..."
        );
        assert!(http_url("ftp://x".into()).is_err());
    }

    #[test]
    fn package_patterns() {
        assert!(package_pattern("calico-*").is_ok());
        assert!(package_pattern("containerd.io").is_ok());
        assert!(package_pattern("Kubelet").is_err());
        assert!(package_pattern("a b").is_err());
        assert!(package_pattern("").is_err());
    }
}
