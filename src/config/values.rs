//! Parsers for single configuration values. Each error says what was
//! expected, so the message stands on its own next to the file position.

use std::time::Duration;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use regex::Regex;

use super::settings::NamespacedName;

/// Values in messages are quoted with [`crate::text::quote`]: escaped and
/// bounded, so a 5 MB value is not echoed whole.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("invalid duration {0}: expected a duration like \"90s\", \"30m\" or \"24h\"")]
    Duration(String),
    #[error("duration {value} is out of range: expected from {min} to {max}")]
    DurationRange {
        value: String,
        min: String,
        max: String,
    },
    #[error("unknown time zone {0}: expected an IANA name like \"Europe/London\" or \"UTC\"")]
    TimeZone(String),
    #[error("invalid time of day {0}: expected \"HH:MM\" (24-hour clock, two digits each)")]
    TimeOfDay(String),
    #[error("invalid day {0}: expected one of mon, tue, wed, thu, fri, sat, sun")]
    Weekday(String),
    #[error("a maintenance window needs at least one day")]
    NoDays,
    #[error("invalid window length {0}: expected more than 0 and at most 7 days")]
    WindowLength(String),
    #[error("invalid regular expression {pattern}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("invalid package pattern {pattern}: {reason}")]
    PackagePattern { pattern: String, reason: String },
    #[error(
        "invalid name {0}: expected a lowercase DNS name (letters, digits, '-', at most 63 characters per part)"
    )]
    DnsName(String),
    #[error(
        "invalid label selector {0}: {1}; expected terms like \"key=value\", \"key!=value\", \"key in (a,b)\", \"key\" or \"!key\", separated by commas"
    )]
    LabelSelector(String, String),
    #[error("a blocking-pod selector must not be empty (it would match every pod)")]
    EmptySelector,
    #[error("invalid DaemonSet reference {0}: expected \"namespace/name\"")]
    NamespacedName(String),
    #[error("invalid URL {0}: {1}; expected an http:// or https:// URL with a host")]
    Url(String, String),
    #[error(
        "invalid listen address {0}: expected \"IP:PORT\" like \"127.0.0.1:9742\" (port not 0)"
    )]
    SocketAddr(String),
    #[error("{value} is out of range: expected a whole number from {min} to {max}")]
    Range { value: i64, min: i64, max: i64 },
    #[error("invalid command: expected a non-empty list whose first element is an absolute path")]
    Argv,
    #[error("{0}")]
    Upgrade(String),
    #[error("unknown event kind {0:?}: expected one of {kinds}", kinds = NOTIFY_EVENT_KINDS.join(", "))]
    EventKind(String),
    #[error(
        "invalid message template: {0}; placeholders are {{node}}, {{event}}, {{severity}}, {{message}}, {{time}} ({{{{ and }}}} for braces)"
    )]
    Template(String),
    #[error("invalid path {0}: {1}")]
    Path(String, &'static str),
    #[error("invalid command argument {0}: it contains a control character")]
    Argument(String),
}

fn q(s: &str) -> String {
    crate::text::quote(s)
}

/// Event kinds a notification can be sent for (`Notice::kind`). Gate
/// re-evaluations and drain progress are left out: too chatty for chat;
/// `drydock status` and the Events show them.
pub(crate) const NOTIFY_EVENT_KINDS: &[&str] = &[
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
pub(crate) const DEFAULT_NOTIFY_EVENTS: &[&str] = &[
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
const TEMPLATE_FIELDS: &[&str] = &["node", "event", "severity", "message", "time"];

pub(crate) fn event_kind(s: &str) -> Result<String, ValueError> {
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

pub(crate) fn duration(text: &str) -> Result<Duration, ValueError> {
    humantime::parse_duration(text.trim()).map_err(|_| ValueError::Duration(q(text)))
}

/// A duration within `min..=max` (each key has its own range: zero would
/// spin a loop or panic a timer, years would overflow a deadline).
pub(crate) fn duration_in(
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ValueError> {
    let d = duration(text)?;
    if d < min || d > max {
        return Err(ValueError::DurationRange {
            value: q(text),
            min: humantime::format_duration(min).to_string(),
            max: humantime::format_duration(max).to_string(),
        });
    }
    Ok(d)
}

pub(crate) fn time_zone(name: &str) -> Result<TimeZone, ValueError> {
    let bad = || ValueError::TimeZone(q(name));
    // IANA names are short ASCII words joined by '/'; anything else (a path,
    // a POSIX TZ string, control bytes) is refused before the lookup.
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('/')
        || name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b))
    {
        return Err(bad());
    }
    TimeZone::get(name).map_err(|_| bad())
}

pub(crate) fn time_of_day(text: &str) -> Result<Time, ValueError> {
    let bad = || ValueError::TimeOfDay(q(text));
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return Err(bad());
    }
    let hour: i8 = h.parse().map_err(|_| bad())?;
    let minute: i8 = m.parse().map_err(|_| bad())?;
    Time::new(hour, minute, 0, 0).map_err(|_| bad())
}

pub(crate) fn weekday(text: &str) -> Result<Weekday, ValueError> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return Err(ValueError::Weekday(q(text))),
    })
}

/// A configured regex: bounded in size so a huge pattern fails fast.
pub(crate) fn regex(pattern: &str) -> Result<Regex, ValueError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ValueError::Regex {
            pattern: q(pattern),
            reason: crate::text::display(
                e.to_string().lines().last().unwrap_or_default(),
                crate::text::MAX_QUOTED,
            ),
        })
}

pub(crate) fn package_pattern(pattern: &str) -> Result<glob::Pattern, ValueError> {
    let valid_chars = pattern
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.*?[]!".contains(c));
    if pattern.is_empty() || pattern.len() > 255 || !valid_chars {
        return Err(ValueError::PackagePattern {
            pattern: q(pattern),
            reason: "Debian package names use a-z, 0-9, '+', '-', '.' (at most 255 characters); globs add '*', '?', '[...]'"
                .into(),
        });
    }
    glob::Pattern::new(pattern).map_err(|e| ValueError::PackagePattern {
        pattern: q(pattern),
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

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub(crate) fn dns_label(s: &str) -> Result<String, ValueError> {
    if is_dns_label(s) {
        Ok(s.to_string())
    } else {
        Err(ValueError::DnsName(q(s)))
    }
}

pub(crate) fn dns_subdomain(s: &str) -> Result<String, ValueError> {
    if is_dns_subdomain(s) {
        Ok(s.to_string())
    } else {
        Err(ValueError::DnsName(q(s)))
    }
}

pub(crate) fn namespaced_name(s: &str) -> Result<NamespacedName, ValueError> {
    let bad = || ValueError::NamespacedName(q(s));
    let (ns, name) = s.split_once('/').ok_or_else(bad)?;
    Ok(NamespacedName {
        namespace: dns_label(ns).map_err(|_| bad())?,
        name: dns_subdomain(name).map_err(|_| bad())?,
    })
}

/// A label name or value part: at most 63 characters, alphanumeric at both
/// ends, '-', '_' and '.' inside (Kubernetes' IsQualifiedName/IsValidLabelValue).
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !is_dns_subdomain(p))
    {
        return Err(format!(
            "key prefix {} is not a lowercase DNS subdomain",
            q(p)
        ));
    }
    if !is_label_name(name) {
        return Err(format!(
            "key {} is not a label name (1-63 letters, digits, '-', '_', '.', alphanumeric at both ends)",
            q(key)
        ));
    }
    Ok(())
}

fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "value {} is not a label value (at most 63 letters, digits, '-', '_', '.', alphanumeric at both ends)",
            q(value)
        ))
    }
}

fn selector_term(term: &str) -> Result<(), String> {
    let t = term.trim();
    if t.is_empty() {
        return Err("empty term".into());
    }
    if let Some(key) = t.strip_prefix('!') {
        return label_key(key.trim());
    }
    if let Some(open) = t.find('(') {
        // Set-based: key (in|notin) (v1, v2, ...)
        let (head, set) = t.split_at(open);
        let mut words = head.split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("term {} is not \"key in (a,b)\"", q(t)));
        };
        if op != "in" && op != "notin" {
            return Err(format!("operator {} is not \"in\" or \"notin\"", q(op)));
        }
        label_key(key)?;
        let inner = set
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| format!("term {} does not end with ')'", q(t)))?;
        if inner.contains(['(', ')']) {
            return Err(format!("term {} has nested parentheses", q(t)));
        }
        if inner.trim().is_empty() {
            return Err(format!("the set of values in {} is empty", q(t)));
        }
        for v in inner.split(',') {
            let v = v.trim();
            if v.is_empty() {
                return Err(format!("the set in {} has an empty element", q(t)));
            }
            label_value(v)?;
        }
        return Ok(());
    }
    if t.contains(')') {
        return Err(format!("term {} has ')' without '('", q(t)));
    }
    for op in ["!=", "==", "="] {
        if let Some((key, value)) = t.split_once(op) {
            label_key(key.trim())?;
            return label_value(value.trim());
        }
    }
    label_key(t)
}

/// Checks a Kubernetes label selector as the API server would (syntax,
/// key and value rules), so a bad one fails at check-config, not at every
/// list call.
pub(crate) fn label_selector(s: &str) -> Result<String, ValueError> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    let bad = |why: String| ValueError::LabelSelector(q(s), why);
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
        if !(0..=1).contains(&depth) {
            return Err(bad("unbalanced parentheses".into()));
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced parentheses".into()));
    }
    terms.push(&s[start..]);
    for term in terms {
        selector_term(term).map_err(bad)?;
    }
    Ok(s.trim().to_string())
}

pub(crate) fn http_url(s: String) -> Result<String, ValueError> {
    let bad = |why: &str| ValueError::Url(q(&redact_url(&s)), why.to_string());
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace or control characters"));
    }
    if s.len() > 2048 {
        return Err(bad("it is longer than 2048 characters"));
    }
    // The url crate forgives "https:///x" (host "x"); a person meant a host.
    if s.split_once("://")
        .is_none_or(|(_, rest)| rest.is_empty() || rest.starts_with('/'))
    {
        return Err(bad("it has no host after \"://\""));
    }
    let url = url::Url::parse(&s).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme is not http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    Ok(s)
}

/// Keeps the scheme and host of a URL that may carry a token in its path,
/// query or user information: `https://hooks.slack.com/...`.
pub(crate) fn redact_url(s: &str) -> String {
    match s.find("://") {
        Some(i) => {
            let after = &s[i + 3..];
            let host_end = after.find(['/', '?', '#']).unwrap_or(after.len());
            // Credentials before '@' are secret too.
            let host = &after[..host_end];
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            // Escaped: the host part may hold anything a file held.
            crate::text::display(&format!("{}://{host}/...", &s[..i]), 300)
        }
        None => "<redacted>".to_string(),
    }
}

pub(crate) fn socket_addr(s: &str) -> Result<std::net::SocketAddr, ValueError> {
    match s.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(addr),
        _ => Err(ValueError::SocketAddr(q(s))),
    }
}

pub(crate) fn bounded_count(value: i64, min: i64, max: i64) -> Result<u32, ValueError> {
    if (min..=max).contains(&value) {
        Ok(value as u32)
    } else {
        Err(ValueError::Range { value, min, max })
    }
}

/// An absolute path of reasonable length without control characters (a NUL
/// cannot be opened; a relative path would resolve against whatever
/// directory apt or systemd happens to run drydock in).
pub(crate) fn abs_path(s: &str) -> Result<std::path::PathBuf, ValueError> {
    let bad = |why| ValueError::Path(q(s), why);
    if s.is_empty() {
        return Err(bad("it is empty; expected an absolute path"));
    }
    if !s.starts_with('/') {
        return Err(bad("it is relative; expected an absolute path"));
    }
    if s.chars().any(char::is_control) {
        return Err(bad("it contains control characters"));
    }
    if s.len() > 4096 {
        return Err(bad("it is longer than 4096 bytes"));
    }
    Ok(s.into())
}

/// An absolute path that names a file (not a directory like "/" or "x/").
pub(crate) fn file_path(s: &str) -> Result<std::path::PathBuf, ValueError> {
    let path = abs_path(s)?;
    if s.ends_with('/') || path.file_name().is_none() {
        return Err(ValueError::Path(
            q(s),
            "it names a directory; expected a file",
        ));
    }
    Ok(path)
}

/// A command: empty (none), or an absolute program and its arguments; the
/// error names the element at fault.
pub(crate) fn argv(argv: Vec<String>) -> Result<Vec<String>, (usize, ValueError)> {
    if let Some(program) = argv.first()
        && (!program.starts_with('/') || program.chars().any(char::is_control))
    {
        return Err((0, ValueError::Argv));
    }
    if let Some(i) = argv.iter().position(|a| a.chars().any(char::is_control)) {
        return Err((i, ValueError::Argument(q(&argv[i]))));
    }
    Ok(argv)
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
        for bad in [
            "=b",
            "a=b,",
            "k in (a",
            "a b",
            "a=b=c",
            "$x",
            "k in ()",
            "k in (a,,b)",
            "k in ((a))",
            "Upper.Case/x=y",
            "a=-b",
            "-a=b",
            "k=)",
            "k in (a) x",
            "k foo (a)",
        ] {
            assert!(label_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_and_days() {
        assert_eq!(
            time_of_day("02:30").unwrap(),
            Time::new(2, 30, 0, 0).unwrap()
        );
        for bad in [
            "2:30", "24:00", "02:60", "0230", "ab:cd", "+1:+5", "-1:05", " 1:05",
        ] {
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
        for bad in [
            "ftp://x",
            "http://",
            "https:///path",
            "http://exa mple",
            "http://[::1",
            "http://x\n",
            "notaurl",
            "",
        ] {
            assert!(http_url(bad.into()).is_err(), "{bad:?}");
        }
        assert!(http_url("http://127.0.0.1:9090".into()).is_ok());
        assert!(!redact_url("https://user:pw@h/x").contains("pw"));
    }

    #[test]
    fn ranges_paths_and_addresses() {
        let (s, h) = (Duration::from_secs(1), Duration::from_secs(3600));
        assert_eq!(duration_in("90s", s, h).unwrap(), Duration::from_secs(90));
        assert!(matches!(
            duration_in("0s", s, h),
            Err(ValueError::DurationRange { .. })
        ));
        assert!(duration_in("2h", s, h).is_err());
        assert!(duration_in("9999999999999999999999s", s, h).is_err());
        assert!(abs_path("/var/lib/x").is_ok());
        for bad in ["", "x", "./x", "/a\0b", "/a\nb"] {
            assert!(abs_path(bad).is_err(), "{bad:?}");
        }
        assert!(file_path("/var/lib/drydock/").is_err());
        assert!(file_path("/").is_err());
        assert!(socket_addr("127.0.0.1:0").is_err());
        assert!(socket_addr("[::1]:9742").is_ok());
        assert_eq!(argv(vec!["x".into()]).unwrap_err().0, 0);
        assert_eq!(
            argv(vec!["/bin/x".into(), "a\u{1b}".into()]).unwrap_err().0,
            1
        );
        assert!(argv(vec![]).unwrap().is_empty());
        // A 5 MB value is quoted in a few dozen bytes.
        let huge = "x".repeat(5 << 20);
        assert!(dns_label(&huge).unwrap_err().to_string().len() < 300);
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
