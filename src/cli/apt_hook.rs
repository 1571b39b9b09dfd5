//! `drydock apt-hook pre-install | post-invoke`: the APT hooks wired by
//! /etc/apt/apt.conf.d/50drydock. Messages go to stderr, where apt shows them.
//!
//! pre-install fails closed: unreadable input, an invalid configuration
//! (then every package counts as protected), or a change to a protected
//! package nobody allowed, exits non-zero and apt installs nothing. It works
//! with the daemon stopped (it reads the config, and the store read-only
//! only when a protected package is concerned and the upgrade step runs).
//! post-invoke never fails apt: it logs its errors and exits 0.
//! Both stop at [`HOOK_DEADLINE`] whatever they wait for.

use std::io::Write;
use std::process::ExitCode;

use jiff::Timestamp;
use serde_json::json;
use tracing::{error, info, warn};

use super::Cli;
use crate::aptgate::policy::{self, ALLOW_ENV, Grants};
use crate::aptgate::record::{self, APT_RUN_KIND, PendingRun};
use crate::aptgate::{holds, protocol, step, wake};
use crate::config::Settings;
use crate::host::dpkg::Dpkg;
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AptHookCommand {
    /// DPkg::Pre-Install-Pkgs (protocol version 3 on stdin): refuse changes to protected packages.
    PreInstall,
    /// DPkg::Post-Invoke: record the run, re-apply holds, wake the daemon. Always exits 0.
    PostInvoke,
}

/// The longest a hook keeps apt waiting: a reader that blocks (a stdin
/// that never ends, a lock on a stuck file system) must not hang apt.
const HOOK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn run(cli: &Cli, command: &AptHookCommand) -> ExitCode {
    match command {
        AptHookCommand::PreInstall => {
            watchdog("refusing this dpkg run", 1);
            pre_install(cli)
        }
        AptHookCommand::PostInvoke => {
            watchdog("apt run not recorded", 0);
            post_invoke(cli);
            ExitCode::SUCCESS
        }
    }
}

/// Ends the process with `code` once [`HOOK_DEADLINE`] has passed.
fn watchdog(what: &'static str, code: i32) {
    std::thread::spawn(move || {
        std::thread::sleep(HOOK_DEADLINE);
        eprintln!(
            "drydock: {what}: the hook did not finish within {}s",
            HOOK_DEADLINE.as_secs()
        );
        std::process::exit(code);
    });
}

fn pre_install(cli: &Cli) -> ExitCode {
    // Read everything first: apt must never get EPIPE from us.
    let (input, overflow) = match protocol::read_all(std::io::stdin().lock()) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("drydock: refusing this dpkg run: reading apt's hook input: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Without a valid configuration the protected set is unknown: every
    // package counts as protected, and no authorization is read.
    let settings = match cli.load_settings() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "drydock: invalid configuration: {e}\n\
                 drydock: until it is fixed (see `drydock check-config`), every package counts as protected"
            );
            None
        }
    };
    let request = match protocol::parse(&input, overflow) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drydock: refusing this dpkg run: {e}. Nothing was installed.");
            return ExitCode::FAILURE;
        }
    };
    let is_protected = |n: &str| settings.as_ref().is_none_or(|s| s.is_protected(n));
    let mut grants = Grants {
        allow: std::env::var(ALLOW_ENV)
            .map(|v| policy::parse_allow(&v))
            .unwrap_or_default(),
        // No kubelet kubeconfig: the node is still being provisioned. A path
        // that cannot be checked counts as joined (protective).
        // An invalid configuration counts as joined too.
        before_join: settings
            .as_ref()
            .is_some_and(|s| matches!(s.node.kubeconfig.try_exists(), Ok(false))),
        ..Grants::default()
    };
    let touched = policy::protected_changes(&request, is_protected);
    let needs_grants = touched
        .iter()
        .any(|c| !policy::allowed_by_admin(c, &grants.allow));
    if let Some(settings) = settings
        .as_ref()
        .filter(|s| needs_grants && step::step_running(s))
    {
        let now = Timestamp::now();
        grants.now = Some(now);
        grants.step_running = true;
        match Store::open_read_only(&settings.node.state_db) {
            Ok(Some(store)) => match store.authorizations(now) {
                Ok(a) => grants.authorizations = a,
                Err(e) => eprintln!("drydock: warning: reading authorizations: {e}"),
            },
            Ok(None) => {}
            Err(e) => eprintln!("drydock: warning: reading authorizations: {e}"),
        }
    }
    let verdict = policy::decide(&request, is_protected, &grants);
    for m in &request.malformed {
        eprintln!(
            "drydock: unreadable hook input line {} ({}): \"{}\"",
            m.line, m.reason, m.excerpt
        );
    }
    if !verdict.allows() {
        eprint!("{}", policy::refusal_message(&verdict.refused));
        match &settings {
            Some(settings) => record_refusal(settings, &verdict.refused),
            // No valid configuration: no known state DB to record in.
            None => eprintln!(
                "drydock: warning: the refusal is not recorded in the history (invalid configuration)"
            ),
        }
        return ExitCode::FAILURE;
    }
    for c in &verdict.authorized {
        eprintln!(
            "drydock: {}: {} (authorized by drydock's upgrade step)",
            c.package, c.change
        );
    }
    for c in &verdict.overridden {
        eprintln!(
            "drydock: {}: {} (allowed by {ALLOW_ENV})",
            c.package, c.change
        );
    }
    for c in &verdict.provisioning {
        let why = match (&c.change, grants.before_join) {
            (policy::Change::Install { .. }, _) => "first install",
            (_, true) => "the node has not joined a cluster yet",
            _ => "provisioning",
        };
        eprintln!(
            "drydock: {}: {} (allowed: {why}; drydock holds it from now on)",
            c.package, c.change
        );
    }
    let pending = PendingRun {
        started_at: Timestamp::now(),
        apt: record::apt_process(&record::read_ancestors(true)),
        actions: request.actions,
        authorized: verdict
            .authorized
            .iter()
            .map(|c| format!("{} {}", c.package, c.change))
            .collect(),
        overridden: verdict
            .overridden
            .iter()
            .map(|c| format!("{} {}", c.package, c.change))
            .collect(),
        provisioning: verdict
            .provisioning
            .iter()
            .map(|c| format!("{} {}", c.package, c.change))
            .collect(),
    };
    if let Some(settings) = &settings
        && let Err(e) = save_pending(settings, &pending)
    {
        eprintln!("drydock: warning: saving the run plan for the history: {e}");
    }
    ExitCode::SUCCESS
}

/// A refusal leaves a trace: a history entry (the daemon, woken, turns it
/// into the refusal metric, a journal line and a Kubernetes Event). Best
/// effort: apt fails either way, and says why on the terminal.
fn record_refusal(settings: &Settings, refused: &[policy::ProtectedChange]) {
    let argvs: Vec<Vec<String>> = record::read_ancestors(false)
        .into_iter()
        .map(|a| a.argv)
        .collect();
    let (origin, command) = record::origin(&argvs);
    let detail = json!({
        "refused": refused,
        "summary": refused.iter().map(|c| format!("{}: {}", c.package, c.change)).collect::<Vec<_>>(),
        "origin": origin,
        "command": command,
    });
    // Into the daemon's store only: a refused run creates nothing (before
    // the daemon's first start there is no history to add to).
    if !matches!(settings.node.state_db.try_exists(), Ok(true)) {
        eprintln!(
            "drydock: warning: the refusal is not recorded: no state database at {} yet",
            settings.node.state_db.display()
        );
    } else if let Err(e) = Store::open(&settings.node.state_db)
        .and_then(|store| store.append_history(record::APT_REFUSED_KIND, &detail))
    {
        eprintln!("drydock: warning: recording the refusal in the history: {e}");
    }
    if let Err(e) = wake::wake_daemon(settings) {
        eprintln!("drydock: warning: telling the daemon about the refusal: {e}");
    }
}

fn save_pending(settings: &Settings, pending: &PendingRun) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = record::pending_path(settings);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    // A left-over plan is unlinked, not truncated: ext4 flushes a file
    // truncated and rewritten in place on close (auto_da_alloc), which cost
    // milliseconds per dpkg run; O_EXCL also never follows a planted symlink.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(&serde_json::to_vec(pending).map_err(std::io::Error::other)?)
}

/// The plan the pre-install hook saved for this apt run, if any. A plan from
/// another run is removed and ignored; the reason is returned for the record.
fn take_pending(
    settings: &Settings,
    now: Timestamp,
    apt: Option<&record::AptProcess>,
) -> (Option<PendingRun>, Option<String>) {
    let Some(plan) = read_pending(settings) else {
        return (None, None);
    };
    match record::check_pending(&plan, now, apt) {
        Ok(()) => (Some(plan), None),
        Err(stale) => {
            warn!(reason = %stale, "ignoring the apt run plan of another run");
            (None, Some(stale.to_string()))
        }
    }
}

/// The largest plan read back (it holds at most the hook's bounded input).
const MAX_PLAN_BYTES: u64 = 2 * protocol::MAX_INPUT as u64;

fn read_pending(settings: &Settings) -> Option<PendingRun> {
    let path = record::pending_path(settings);
    // Not a plain read: a FIFO or device planted there must not hang apt.
    let bytes = match crate::fileread::read_regular(&path, MAX_PLAN_BYTES) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "reading apt run plan");
            return None;
        }
    };
    if let Err(e) = std::fs::remove_file(&path) {
        warn!(path = %path.display(), error = %e, "removing apt run plan");
    }
    match serde_json::from_slice(&bytes) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "apt run plan is unreadable");
            None
        }
    }
}

fn post_invoke(cli: &Cli) {
    let settings = match cli.load_settings() {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "apt post-invoke: invalid configuration; apt run not recorded");
            eprintln!("drydock: apt run not recorded: invalid configuration: {e}");
            return;
        }
    };
    let finished_at = Timestamp::now();
    let ancestors = record::read_ancestors(false);
    let (pending, stale_plan) = take_pending(
        &settings,
        finished_at,
        record::apt_process(&ancestors).as_ref(),
    );
    let argvs: Vec<Vec<String>> = ancestors.into_iter().map(|a| a.argv).collect();
    let (origin, command) = record::origin(&argvs);
    let dpkg = Dpkg::new(&settings.packages.dpkg_root);
    // dpkg-query runs while the store opens (both take milliseconds).
    let query = dpkg.start_packages();
    let store = Store::open(&settings.node.state_db);
    let packages = query
        .and_then(|q| q.wait())
        .inspect_err(|e| error!(error = %e, "apt post-invoke: reading dpkg state"))
        .ok();
    let (changes, incomplete) = match (&pending, &packages) {
        (Some(p), Some(after)) => record::outcome(p, after),
        _ => (Vec::new(), Vec::new()),
    };
    let store = match store {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "apt post-invoke: opening the state store; apt run not recorded");
            eprintln!("drydock: apt run not recorded: {e}");
            wake_daemon(&settings);
            return;
        }
    };
    let holds = match &packages {
        Some(pkgs) => match holds::reconcile_with(&settings, &store, &dpkg, pkgs) {
            Ok(plan) => {
                if !plan.hold.is_empty() || !plan.release.is_empty() {
                    info!(held = ?plan.hold, released = ?plan.release, "dpkg holds reconciled");
                }
                json!({"held": plan.hold, "released": plan.release})
            }
            Err(e) => {
                error!(error = %e, "apt post-invoke: re-applying holds");
                json!({"error": e.to_string()})
            }
        },
        None => json!({"error": "dpkg state unreadable"}),
    };
    let detail = json!({
        "started_at": pending.as_ref().map(|p| p.started_at),
        "finished_at": finished_at,
        "origin": origin,
        "command": command,
        "changes": changes,
        "incomplete": incomplete,
        "authorized": pending.as_ref().map(|p| p.authorized.clone()).unwrap_or_default(),
        "overridden": pending.as_ref().map(|p| p.overridden.clone()).unwrap_or_default(),
        "provisioning": pending.as_ref().map(|p| p.provisioning.clone()).unwrap_or_default(),
        "plan_recorded": pending.is_some(),
        "stale_plan_ignored": stale_plan,
        "holds": holds,
    });
    match store.append_history(APT_RUN_KIND, &detail) {
        Ok(_) => info!(origin = ?origin, changes = changes.len(), "apt run recorded"),
        Err(e) => error!(error = %e, "apt post-invoke: recording the apt run"),
    }
    wake_daemon(&settings);
}

fn wake_daemon(settings: &Settings) {
    if let Err(e) = wake::wake_daemon(settings) {
        warn!(error = %e, "apt post-invoke: waking the daemon");
    }
}
