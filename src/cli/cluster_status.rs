//! `drydock cluster status`: the whole fleet from any node, from what the
//! nodes publish (their Node objects, the Leases, the drydock Namespace):
//! three API requests, no SSH.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use jiff::Timestamp;

use crate::cluster::fleet::{self, FleetStatus, NodeView, Presence};
use crate::config::Settings;
use crate::gates::{ago, human};
use crate::report::REPUBLISH_EVERY;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// A report older than this means drydock is not running on that node: it
/// republishes every [`REPUBLISH_EVERY`] and loops at least every check
/// interval.
pub(crate) fn stale_after(settings: &Settings) -> Duration {
    REPUBLISH_EVERY * 2 + settings.reboot.check_interval
}

pub(crate) async fn run(
    settings: &Settings,
    client: &kube::Client,
    args: &Args,
) -> anyhow::Result<ExitCode> {
    let ns = &settings.lease.namespace;
    let reading = tokio::time::timeout(Duration::from_secs(30), fleet::read(client, ns))
        .await
        .context("reading the fleet: the API server did not answer within 30s")?
        .context("reading the fleet")?;
    let status = fleet::assemble(
        &reading,
        ns,
        &settings.lease_slot_names(),
        settings.lease.duration,
        stale_after(settings),
        Timestamp::now(),
    );
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &status)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&status).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn since(now: Timestamp, t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), |t| ago(now, t))
}

/// Control characters never reach the terminal (the words come from the API).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn window(now: Timestamp, n: &NodeView) -> String {
    match (n.window_open, n.next_window) {
        (Some(true), _) => "open".to_string(),
        (Some(false), Some(at)) => format!(
            "{} (in {})",
            at.strftime("%a %H:%M UTC"),
            human(at.duration_since(now))
        ),
        _ => "-".to_string(),
    }
}

fn drydock(now: Timestamp, n: &NodeView) -> String {
    match (n.drydock, n.reported_at) {
        (Presence::Running, Some(at)) => format!("{} ago", ago(now, at)),
        (Presence::Stale, Some(at)) => format!("SILENT {}", ago(now, at)),
        (Presence::Unreadable, _) => "UNREADABLE".to_string(),
        _ => "none".to_string(),
    }
}

/// Why the node is where it is: the gate that blocks it, else its words.
fn why(n: &NodeView) -> String {
    if let Some(e) = &n.report_error {
        return format!("report unreadable: {e}");
    }
    let mut s = match n.blocked_by.first() {
        Some(g) if n.blocked_by.len() > 1 => format!(
            "{}: {} (+{} more)",
            g.gate,
            g.reason,
            n.blocked_by.len() - 1
        ),
        Some(g) => format!("{}: {}", g.gate, g.reason),
        None => n.detail.clone().unwrap_or_default(),
    };
    match (&n.step, n.state.as_deref()) {
        (Some(step), Some("failed")) => s = format!("[{step}] {s}"),
        _ if !n.blocked_by.is_empty() => {
            if let Some(u) = &n.upgrade {
                s = format!("upgrading {} -> {} at {}; {s}", u.from, u.to, u.step);
            }
        }
        _ => {}
    }
    clean(&s)
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The text view.
pub(crate) fn render(f: &FleetStatus) -> String {
    let now = f.at;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "fleet:    {} nodes (namespace {}), {}",
        f.nodes.len(),
        f.namespace,
        f.counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let control = |c: &Option<fleet::Control>| match c {
        None => "no".to_string(),
        Some(c) => {
            let by =
                c.by.as_ref()
                    .map(|b| format!(", by {b}"))
                    .unwrap_or_default();
            let since = c
                .since
                .map(|t| format!(" {} ago", ago(now, t)))
                .unwrap_or_default();
            clean(&format!("YES{by}{since}: {}", c.reason))
        }
    };
    match &f.namespace_error {
        Some(e) => {
            let unknown = clean(&format!("UNKNOWN ({e})"));
            line(format!("halted:   {unknown}"));
            line(format!("paused:   {unknown}"));
            line(format!("target:   {unknown}"));
        }
        None => {
            line(format!("halted:   {}", control(&f.halted)));
            line(format!("paused:   {}", control(&f.paused)));
            line(format!(
                "target:   {}",
                f.target_version.as_deref().map_or(
                    "none (drydock.dev/kubernetes-version not set)".into(),
                    clean
                )
            ));
        }
    }
    if let Some(r) = &f.last_reboot_finished {
        line(format!(
            "last reboot finished: {} ({} ago)",
            clean(&r.node),
            ago(now, r.at)
        ));
    }
    if let Some(b) = &f.cluster_blocked {
        line(clean(&format!(
            "shared block: {}: {} (found by {} {} ago)",
            b.gate,
            b.reason,
            b.by,
            ago(now, b.at)
        )));
    }
    match &f.leases_error {
        Some(e) => line(clean(&format!("slots:    UNKNOWN ({e})"))),
        None => line("slots:".to_string()),
    }
    for s in &f.slots {
        let text = match &s.holder {
            None => "free".to_string(),
            Some(h) => {
                let mut t = format!("{} for {}", clean(h), since(now, s.since));
                if let Some(r) = s.renewed_at {
                    t.push_str(&format!(" (renewed {} ago)", ago(now, r)));
                }
                if s.expired {
                    t.push_str(" EXPIRED: the holder stopped renewing");
                }
                t
            }
        };
        line(format!("  {}: {text}", s.name));
    }
    line(String::new());
    let mut rows = vec![
        [
            "NODE",
            "READY",
            "STATE",
            "SINCE",
            "REBOOT-NEEDED",
            "LAST-REBOOT",
            "KUBELET",
            "DRYDOCK",
            "SLOT",
            "WINDOW",
            "WHY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in &f.nodes {
        let ready = match (n.ready, n.unschedulable) {
            (true, false) => "yes",
            (true, true) => "cordoned",
            (false, _) => "NO",
        };
        rows.push(vec![
            clean(&n.name),
            ready.to_string(),
            n.state.as_deref().map_or("-".into(), clean),
            since(now, n.since),
            since(now, n.reboot_needed_since),
            since(now, n.last_reboot),
            n.kubelet_version.as_deref().map_or("-".into(), clean),
            drydock(now, n),
            n.slot.as_ref().map_or("-".into(), |s| {
                format!("{s} ({})", since(now, n.slot_since))
            }),
            window(now, n),
            why(n),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_could_not_be_read_is_shown_as_unknown() {
        let reading = fleet::FleetReading {
            leases_error: Some("listing Leases in namespace drydock: forbidden".into()),
            namespace_error: Some("reading Namespace drydock: forbidden".into()),
            ..Default::default()
        };
        let f = fleet::assemble(
            &reading,
            "drydock",
            &["drydock-default-0".into()],
            Duration::from_secs(120),
            Duration::from_secs(900),
            "2026-01-01T12:00:00Z".parse().unwrap(),
        );
        let text = render(&f);
        assert!(
            text.contains("halted:   UNKNOWN (reading Namespace drydock: forbidden)"),
            "{text}"
        );
        assert!(text.contains("slots:    UNKNOWN (listing Leases"), "{text}");
        assert!(!text.contains("free"), "{text}");
        assert!(!text.contains("halted:   no"), "{text}");
    }

    #[test]
    fn terminal_control_characters_are_not_printed() {
        assert_eq!(clean("a\x1b]52;c;x\x07b\nc"), "a ]52;c;x b c");
    }
}
