//! `drydock history`: apt runs, reboots and upgrades, oldest first.

use std::process::ExitCode;

use anyhow::Context;

use super::Cli;
use crate::store::{HistoryRecord, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
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

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
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
pub fn line(r: &HistoryRecord) -> String {
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
        _ => r.detail.to_string(),
    };
    // Stored text (apt command lines, reasons) may hold escape sequences.
    crate::text::escape(&format!("{at}  {:<10} {summary}", r.kind)).into_owned()
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
}
