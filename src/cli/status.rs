//! `drydock status`: what this node is doing and why, from the state the
//! daemon persists (so it works when the daemon is stopped), plus the
//! Lease slots when the API answers.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use jiff::Timestamp;
use serde::Serialize;

use super::Cli;
use crate::agent::AgentState;
use crate::agent::driver::{GatesRecord, RebootNeedRecord, StatusRecord, keys};
use crate::aptgate::holds::HOLDS_MADE_KEY;
use crate::cluster::lease::{LeaseClient, SlotStatus};
use crate::gates;
use crate::host::dpkg::{Dpkg, Selection};
use crate::host::instance::running_daemon;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct StatusView {
    node: String,
    daemon: String,
    state: Option<AgentState>,
    summary: Option<StatusRecord>,
    reboot_need: Option<RebootNeedRecord>,
    gates: Option<GatesRecord>,
    local_pause: Option<String>,
    next_window: Option<String>,
    /// Protected packages drydock keeps on dpkg hold.
    held_packages: Vec<String>,
    /// Protected packages on hold that drydock did not hold itself (an
    /// administrator's, or left by an earlier, purged install); read from
    /// dpkg, so `status` never says "nothing held" while they are held.
    held_not_by_drydock: Result<Vec<String>, String>,
    lease_slots: Result<Vec<SlotStatus>, String>,
}

/// Installed protected packages on hold that are not in drydock's record.
fn held_not_by_drydock(
    settings: &crate::config::Settings,
    made: &[String],
) -> Result<Vec<String>, String> {
    let packages = Dpkg::new(&settings.packages.dpkg_root)
        .packages()
        .map_err(|e| e.to_string())?;
    Ok(packages
        .iter()
        .filter(|p| p.is_installed() && p.want == Selection::Hold)
        .filter(|p| settings.is_protected(&p.package) && !made.contains(&p.name))
        .map(|p| p.name.clone())
        .collect())
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let settings = cli.load_settings().context("loading configuration")?;
    let node = super::daemon::node_name(settings.node.name.as_deref())?;
    let store =
        Store::open_read_only(&settings.node.state_db).context("opening the state store")?;
    let now = Timestamp::now();
    let (state, summary, reboot_need, gates_record, local_pause, held_packages) = match &store {
        Some(s) => (
            s.current_state::<AgentState>()?.map(|(st, _)| st),
            s.get::<StatusRecord>(keys::LAST_STATUS)?,
            s.get::<RebootNeedRecord>(keys::REBOOT_NEED)?,
            s.get::<GatesRecord>(keys::LAST_GATES)?,
            gates::paused::local_pause(s)?.map(|p| format!("{p:?}")),
            s.get::<Vec<String>>(HOLDS_MADE_KEY)?.unwrap_or_default(),
        ),
        None => (None, None, None, None, None, Vec::new()),
    };
    let daemon = match (running_daemon(&settings.node.run_dir), &store) {
        (Some(pid), _) => format!("running (pid {pid})"),
        (None, None) => "not running; it never ran on this node (no state store yet)".to_string(),
        (None, Some(_)) => "not running (showing its last persisted state)".to_string(),
    };
    let next_window = if gates::window::is_open(&settings.maintenance.windows, now) {
        Some("open now".to_string())
    } else {
        gates::window::next_opening(&settings.maintenance.windows, now).map(|z| {
            // The window's own zone, this node's clock, and UTC (the
            // kubelet's and the API server's timestamps).
            let here = z.timestamp().to_zoned(jiff::tz::TimeZone::system());
            format!(
                "{} (this node: {}; {})",
                gates::window::describe(&z),
                here.strftime("%a %H:%M %Z"),
                z.timestamp().strftime("%a %H:%M UTC")
            )
        })
    };
    let held_not_by_drydock = held_not_by_drydock(&settings, &held_packages);
    let lease_slots = lease_slots(&settings, &node).await;
    let view = StatusView {
        node,
        daemon,
        state,
        summary,
        reboot_need,
        gates: gates_record,
        local_pause,
        next_window,
        held_packages,
        held_not_by_drydock,
        lease_slots,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print_text(&view, now);
    }
    Ok(ExitCode::SUCCESS)
}

async fn lease_slots(
    settings: &crate::config::Settings,
    node: &str,
) -> Result<Vec<SlotStatus>, String> {
    let client = super::daemon::kube_client(&settings.node.kubeconfig)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let lease = LeaseClient::new(client, settings, node);
    match tokio::time::timeout(Duration::from_secs(5), lease.slots()).await {
        Ok(Ok(slots)) => Ok(slots),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the API server did not answer within 5s".into()),
    }
}

fn ago(now: Timestamp, then: Timestamp) -> String {
    gates::ago(now, then)
}

fn print_text(v: &StatusView, now: Timestamp) {
    println!("node:         {}", v.node);
    println!("daemon:       {}", v.daemon);
    match &v.summary {
        Some(s) => println!("status:       {} ({})", s.line, ago(now, s.at)),
        None => println!("status:       (none recorded)"),
    }
    println!(
        "state:        {}",
        v.state
            .as_ref()
            .map_or("idle (nothing recorded)".into(), |s| s.name().to_string())
    );
    if let Some(AgentState::Failed { step, error, .. }) = &v.state {
        println!("  failed at {step}: {error}");
        println!("  fix it, then `drydock resume`; or `drydock release --force`");
    }
    match &v.reboot_need {
        Some(n) if !n.reasons.is_empty() => {
            let since = n.since.map(|s| ago(now, s)).unwrap_or_default();
            println!("reboot:       needed since {since}");
            for r in &n.reasons {
                println!("  - {r}");
            }
        }
        Some(n) => println!(
            "reboot:       not needed (checked {})",
            ago(now, n.checked_at)
        ),
        None => println!("reboot:       not checked yet"),
    }
    if let Some(p) = &v.local_pause {
        println!("paused:       {p}");
    }
    println!(
        "window:       {}",
        v.next_window
            .as_deref()
            .unwrap_or("any time (no windows configured)")
    );
    match &v.gates {
        Some(g) => {
            println!("gates:        (evaluated {})", ago(now, g.at));
            for gate in &g.gates {
                if gate.passed {
                    println!("  pass  {}", gate.gate);
                } else if gate.skipped {
                    println!("  -     {}: {}", gate.gate, gate.reason);
                } else {
                    println!("  BLOCK {}: {}", gate.gate, gate.reason);
                }
            }
        }
        None => println!("gates:        not evaluated yet"),
    }
    let others = v
        .held_not_by_drydock
        .as_ref()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if v.held_packages.is_empty() && others.is_empty() {
        println!("held:         nothing (no protected package installed, or not reconciled yet)");
    } else if !v.held_packages.is_empty() {
        println!("held:         {}", v.held_packages.join(", "));
    }
    if !others.is_empty() {
        println!(
            "held:         {} (not held by drydock: an administrator's, or left by an earlier install; drydock never releases these)",
            others.join(", ")
        );
    }
    if let Err(e) = &v.held_not_by_drydock {
        println!("held:         dpkg holds unknown: {e}");
    }
    match &v.lease_slots {
        Ok(slots) => {
            println!("lease slots:");
            for s in slots {
                let holder = s.holder.as_deref().unwrap_or("free");
                let note = if s.expired { " (expired)" } else { "" };
                println!("  {}: {holder}{note}", s.name);
            }
        }
        Err(e) => println!("lease slots:  unknown: {e}"),
    }
}
