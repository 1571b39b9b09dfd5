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
pub(crate) struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// The `--json` shape: every field always present (`null` when unknown);
/// `version` changes only when a field changes meaning or is removed.
#[derive(Debug, Serialize)]
struct StatusView {
    version: u32,
    node: String,
    daemon: String,
    state: Option<AgentState>,
    summary: Option<StatusRecord>,
    reboot_need: Option<RebootNeedRecord>,
    gates: Option<GatesRecord>,
    local_pause: Option<gates::paused::LocalPause>,
    next_window: Option<String>,
    /// Protected packages drydock keeps on dpkg hold.
    held_packages: Vec<String>,
    /// Protected packages on hold that drydock did not hold itself (an
    /// administrator's, or left by an earlier, purged install); read from
    /// dpkg, so `status` never says "nothing held" while they are held.
    held_not_by_drydock: HeldElsewhere,
    lease: LeaseView,
}

#[derive(Debug, Serialize)]
struct HeldElsewhere {
    /// `null` when dpkg could not be read (see `error`).
    packages: Option<Vec<String>>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct LeaseView {
    /// `null` when the API server could not be asked (see `error`).
    slots: Option<Vec<SlotStatus>>,
    error: Option<String>,
}

/// Text from the store, the cluster or an operator, safe for a terminal.
fn t(s: &str) -> String {
    crate::text::display(s, 500)
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

pub(crate) async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let settings = cli.load_settings().context("loading configuration")?;
    let node = super::daemon::node_name(settings.node.name.as_deref())?;
    let store =
        Store::open_read_only(&settings.node.state_db).context("opening the state store")?;
    let now = Timestamp::now();
    let (state, summary, reboot_need, gates_record, local_pause, held_packages) = match &store {
        Some(s) => (
            s.current_state::<AgentState>()?.map(|(st, _)| st),
            s.read(keys::LAST_STATUS)?,
            s.read(keys::REBOOT_NEED)?,
            s.read(keys::LAST_GATES)?,
            // Stored by an operator: escaped in the JSON too, so `jq -r`
            // prints it as safely as the text view.
            gates::paused::local_pause(s)?.map(|p| gates::paused::LocalPause {
                reason: t(&p.reason),
                ..p
            }),
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
    let lease = match lease_slots(&settings, &node).await {
        Ok(slots) => LeaseView {
            slots: Some(slots),
            error: None,
        },
        Err(e) => LeaseView {
            slots: None,
            error: Some(e),
        },
    };
    let held_not_by_drydock = match held_not_by_drydock(&settings, &held_packages) {
        Ok(packages) => HeldElsewhere {
            packages: Some(packages),
            error: None,
        },
        Err(e) => HeldElsewhere {
            packages: None,
            error: Some(e),
        },
    };
    let view = StatusView {
        version: 1,
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
        lease,
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
    let client = super::identity::current_client(settings)
        .await
        .map_err(|e| crate::text::anyhow_chain(&e))?;
    let lease = LeaseClient::new(client, settings, node);
    match tokio::time::timeout(Duration::from_secs(5), lease.slots()).await {
        Ok(Ok(slots)) => Ok(slots),
        Ok(Err(e)) => Err(crate::text::error_chain(&e)),
        Err(_) => Err("the API server did not answer within 5s".into()),
    }
}

fn ago(now: Timestamp, then: Timestamp) -> String {
    gates::ago(now, then)
}

/// The local Kubernetes upgrade step, in this state or the one a failure
/// interrupted: `v1.34.2 -> v1.35.2, step install-kubelet (done: ...)`.
fn upgrade_line(state: &AgentState) -> Option<String> {
    let progress = match state {
        AgentState::Failed { interrupted, .. } => return upgrade_line(interrupted),
        AgentState::Locked { cycle }
        | AgentState::Cordoning { cycle, .. }
        | AgentState::Draining { cycle, .. }
        | AgentState::Rebooting { cycle, .. }
        | AgentState::Verifying { cycle, .. }
        | AgentState::Releasing { cycle, .. }
        | AgentState::Upgrading { cycle, .. } => cycle.upgrade.as_ref()?,
        AgentState::Idle | AgentState::Pending { .. } => return None,
    };
    let done: Vec<&str> = progress.done.iter().map(|s| s.name()).collect();
    Some(format!(
        "{} -> {} (kubeadm upgrade {}), step {} (done: {})",
        progress
            .from
            .map_or("unknown".to_string(), |v| v.to_string()),
        progress.to,
        match progress.action {
            crate::upgrade::KubeadmAction::Apply => "apply",
            crate::upgrade::KubeadmAction::Node => "node",
        },
        progress.step,
        if done.is_empty() {
            "none".to_string()
        } else {
            done.join(", ")
        }
    ))
}

fn print_text(v: &StatusView, now: Timestamp) {
    println!("node:         {}", t(&v.node));
    println!("daemon:       {}", v.daemon);
    match &v.summary {
        Some(s) => println!("status:       {} ({})", t(&s.line), ago(now, s.at)),
        None => println!("status:       (none recorded)"),
    }
    println!(
        "state:        {}",
        v.state
            .as_ref()
            .map_or("idle (nothing recorded)".into(), |s| s.name().to_string())
    );
    if let Some(AgentState::Failed { step, error, .. }) = &v.state {
        println!("  failed at {}: {}", t(&step.to_string()), t(error));
        println!("  fix it, then `drydock resume`; or `drydock release --force`");
    }
    if let Some(line) = v.state.as_ref().and_then(upgrade_line) {
        println!("upgrade:      {line}");
    }
    match &v.reboot_need {
        Some(n) if !n.reasons.is_empty() => {
            let since = n.since.map(|s| ago(now, s)).unwrap_or_default();
            println!("reboot:       needed since {since}");
            for r in &n.reasons {
                println!("  - {}", t(r));
            }
        }
        Some(n) => println!(
            "reboot:       not needed (checked {})",
            ago(now, n.checked_at)
        ),
        None => println!("reboot:       not checked yet"),
    }
    if let Some(p) = &v.local_pause {
        println!(
            "paused:       {} (since {}; drydock resume)",
            t(&p.reason),
            ago(now, p.since)
        );
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
                    println!("  -     {}: {}", gate.gate, t(&gate.reason));
                } else {
                    println!("  BLOCK {}: {}", gate.gate, t(&gate.reason));
                }
            }
        }
        None => println!("gates:        not evaluated yet"),
    }
    let others = v.held_not_by_drydock.packages.as_deref().unwrap_or(&[]);
    if v.held_packages.is_empty() && others.is_empty() {
        println!("held:         nothing (no protected package installed, or not reconciled yet)");
    } else if !v.held_packages.is_empty() {
        println!("held:         {}", t(&v.held_packages.join(", ")));
    }
    if !others.is_empty() {
        println!(
            "held:         {} (not held by drydock: an administrator's, or left by an earlier install; drydock never releases these)",
            t(&others.join(", "))
        );
    }
    if let Some(e) = &v.held_not_by_drydock.error {
        println!("held:         dpkg holds unknown: {}", t(e));
    }
    match (&v.lease.slots, &v.lease.error) {
        (Some(slots), _) => {
            println!("lease slots:");
            for s in slots {
                let holder = s.holder.as_deref().unwrap_or("free");
                let note = if s.expired { " (expired)" } else { "" };
                println!("  {}: {}{note}", t(&s.name), t(holder));
            }
        }
        (None, e) => println!("lease slots:  unknown: {}", t(e.as_deref().unwrap_or("?"))),
    }
}

#[cfg(test)]
mod upgrade_line_tests {
    use super::*;
    use crate::agent::state::{Cordon, Cycle};
    use crate::upgrade::steps::Progress;
    use crate::upgrade::{KubeVersion, KubeadmAction};

    #[test]
    fn shows_the_local_upgrade_step_also_when_failed() {
        let mut progress = Progress::new(
            Some(KubeVersion::new(1, 34, 2)),
            KubeVersion::new(1, 35, 2),
            KubeadmAction::Apply,
            false,
        );
        progress.advance();
        let cycle = Cycle {
            reasons: vec!["Kubernetes upgrade v1.34.2 -> v1.35.2".into()],
            needed_since: Timestamp::UNIX_EPOCH,
            slot: "drydock-default-0".into(),
            locked_at: Timestamp::UNIX_EPOCH,
            upgrade: Some(progress),
        };
        let upgrading = AgentState::Upgrading {
            cycle,
            cordon: Some(Cordon::Ours),
            drain_seconds: 0.0,
        };
        let line = upgrade_line(&upgrading).unwrap();
        assert_eq!(
            line,
            "v1.34.2 -> v1.35.2 (kubeadm upgrade apply), step resolve-packages (done: apt-source)"
        );
        let failed = AgentState::Failed {
            step: crate::agent::state::Step::Upgrade,
            error: "x".into(),
            at: Timestamp::UNIX_EPOCH,
            interrupted: Box::new(upgrading),
            slot_held: true,
        };
        assert_eq!(upgrade_line(&failed).unwrap(), line);
        assert_eq!(upgrade_line(&AgentState::Idle), None);
    }
}
