//! `drydock history`: apt runs, reboots and upgrades, oldest first.

use std::process::ExitCode;

use anyhow::Context;

use super::Cli;
use crate::store::{HistoryRecord, Store};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print a JSON array instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only these kinds (repeatable), e.g. `apt-run`.
    #[arg(long, value_name = "KIND")]
    pub kind: Vec<String>,
    /// At most this many records (the newest).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

pub(crate) fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let settings = cli.load_settings().context("loading configuration")?;
    let path = &settings.node.state_db;
    let records = match Store::open_read_only(path)
        .with_context(|| format!("opening the state store {}", path.display()))?
    {
        Some(store) => {
            let kinds: Vec<&str> = args.kind.iter().map(String::as_str).collect();
            store
                .history(&kinds, args.limit)
                .context("reading history")?
        }
        None => Vec::new(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else if records.is_empty() {
        println!("no history yet");
    } else {
        for r in &records {
            println!("{}", line(r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One human line per record.
pub(crate) fn line(r: &HistoryRecord) -> String {
    let at = r.at.strftime("%Y-%m-%d %H:%M:%S UTC");
    let summary = match r.kind.as_str() {
        "apt-run" => apt_run_summary(&r.detail),
        "apt-refused" => format!(
            "refused `{}`: {}",
            r.detail["command"].as_str().unwrap_or("an apt run"),
            r.detail["summary"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        kind => detail_summary(kind, &r.detail),
    };
    // Stored text (apt command lines, reasons) may hold escape sequences.
    crate::text::escape(&format!("{at}  {:<10} {summary}", r.kind)).into_owned()
}

/// Any other record (state changes, drains, reboots, upgrades) for people:
/// `node: from -> to: summary (key: value, ...)`. `--json` keeps the
/// stored form for scripts.
fn detail_summary(kind: &str, d: &serde_json::Value) -> String {
    let Some(map) = d.as_object() else {
        return value_text(d);
    };
    let mut head = Vec::new();
    let mut skip = vec!["node"];
    if let Some(to) = map.get("to").and_then(|v| v.as_str()) {
        let from = map.get("from").and_then(|v| v.as_str()).unwrap_or("-");
        head.push(format!("{from} -> {to}"));
        skip.extend(["from", "to"]);
    }
    if let Some(summary) = map.get("summary").and_then(|v| v.as_str()) {
        head.push(summary.to_string());
        // The structured report behind the summary is for --json.
        skip.extend(["summary", "report"]);
    }
    let rest: Vec<String> = map
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}: {}", value_text(v)))
        .collect();
    let mut text = match map.get("node").and_then(|v| v.as_str()) {
        Some(node) => format!("{node}: "),
        None => String::new(),
    };
    if head.is_empty() && rest.is_empty() {
        text.push_str(kind);
    }
    text.push_str(&head.join(": "));
    if !rest.is_empty() {
        if head.is_empty() {
            text.push_str(&rest.join(", "));
        } else {
            text.push_str(&format!(" ({})", rest.join(", ")));
        }
    }
    text
}

/// A detail value without JSON quoting: strings bare, lists joined,
/// objects as `key=value` pairs.
fn value_text(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join("; "),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", value_text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn apt_run_summary(d: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let mut parts = Vec::new();
    for c in d["changes"].as_array().into_iter().flatten() {
        parts.push(match s(&c["action"]).as_str() {
            "upgrade" | "downgrade" => format!(
                "{} {} {} -> {}",
                s(&c["action"]),
                s(&c["package"]),
                s(&c["old"]),
                s(&c["new"])
            ),
            "remove" => format!("remove {} {}", s(&c["package"]), s(&c["old"])),
            a => format!("{a} {} {}", s(&c["package"]), s(&c["new"])),
        });
    }
    for c in d["incomplete"].as_array().into_iter().flatten() {
        parts.push(format!(
            "NOT DONE {} (planned {}, now {})",
            s(&c["package"]),
            s(&c["planned"]),
            s(&c["now"])
        ));
    }
    if parts.is_empty() {
        parts.push("no package changes".into());
    }
    let by = match d["origin"].as_str() {
        Some("unattended-upgrades") => "unattended-upgrades",
        _ => "apt",
    };
    format!("{by}: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apt_run_line() {
        let r = HistoryRecord {
            id: 1,
            at: "2025-03-01T02:03:04Z".parse().unwrap(),
            kind: "apt-run".into(),
            detail: json!({
                "origin": "unattended-upgrades",
                "changes": [
                    {"package": "hello", "action": "upgrade", "old": "1.0-1", "new": "2.0-1"},
                    {"package": "x", "action": "install", "old": null, "new": "3"}
                ],
                "incomplete": [{"package": "y", "planned": "2", "now": "1"}]
            }),
        };
        assert_eq!(
            line(&r),
            "2025-03-01 02:03:04 UTC  apt-run    unattended-upgrades: upgrade hello 1.0-1 -> 2.0-1; install x 3; NOT DONE y (planned 2, now 1)"
        );
    }

    fn record(kind: &str, detail: serde_json::Value) -> HistoryRecord {
        HistoryRecord {
            id: 1,
            at: "2025-03-01T02:03:04Z".parse().unwrap(),
            kind: kind.into(),
            detail,
        }
    }

    #[test]
    fn state_rows_read_as_transitions_not_json() {
        let r = record(
            "state",
            json!({"node": "w1", "from": "idle", "to": "pending", "reasons": ["kernel 6.1.2", "libc6"]}),
        );
        assert_eq!(
            line(&r),
            "2025-03-01 02:03:04 UTC  state      w1: idle -> pending (reasons: kernel 6.1.2; libc6)"
        );
        let r = record(
            "state",
            json!({"node": "w1", "from": "releasing", "to": "idle"}),
        );
        assert_eq!(
            line(&r),
            "2025-03-01 02:03:04 UTC  state      w1: releasing -> idle"
        );
        let r = record(
            "state",
            json!({"node": "w1", "from": "rebooting", "to": "failed", "error": "boot id \"x\"\nunchanged"}),
        );
        let l = line(&r);
        assert!(!l.contains('{') && !l.contains('\n'), "{l}");
        assert!(
            l.ends_with("w1: rebooting -> failed (error: boot id \"x\"\\nunchanged)"),
            "{l}"
        );
    }

    #[test]
    fn other_rows_use_their_summary_and_plain_fields() {
        let r = record(
            "drain",
            json!({"node": "w1", "summary": "evicted 3 pods in 4s", "report": {"evicted": ["a", "b", "c"]}}),
        );
        assert_eq!(
            line(&r),
            "2025-03-01 02:03:04 UTC  drain      w1: evicted 3 pods in 4s"
        );
        let r = record(
            "reboot",
            json!({"node": "w1", "reasons": ["kernel"], "durations": {"drain-seconds": 4.5, "reboot-seconds": 60.0}}),
        );
        assert_eq!(
            line(&r),
            "2025-03-01 02:03:04 UTC  reboot     w1: durations: drain-seconds=4.5 reboot-seconds=60.0, reasons: kernel"
        );
        let r = record(
            "upgrade",
            json!({"node": "w1", "from": null, "to": "1.34.2"}),
        );
        assert_eq!(
            line(&r),
            "2025-03-01 02:03:04 UTC  upgrade    w1: - -> 1.34.2"
        );
        assert_eq!(
            line(&record("odd", json!(7))),
            "2025-03-01 02:03:04 UTC  odd        7"
        );
    }
}
