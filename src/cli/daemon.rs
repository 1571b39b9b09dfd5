//! `drydock daemon`: the systemd service. Loads the config and state, keeps
//! the protected packages on hold, and drives this node's agent until
//! SIGTERM. SIGHUP (`systemctl reload drydock`) re-reads the configuration:
//! a bad file is refused and the running settings stay.

use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::Cli;
use super::reload;
use crate::agent::Agent;
use crate::agent::kube_cluster::KubeCluster;
use crate::agent::node_host::NodeHost;
use crate::agent::ports::{AgentEvent, GateStatus, Reporter as ReporterPort};
use crate::agent::state::PhaseDurations as AgentDurations;
use crate::aptgate::record::{APT_REFUSED_KIND, APT_RUN_KIND};
use crate::aptgate::{self, HoldPlan, WakeListener};
use crate::config::Settings;
use crate::gates::GateName;
use crate::host::dpkg::Dpkg;
use crate::host::instance::DaemonLock;
use crate::host::logind::LogindRebooter;
use crate::logging::msgid;
use crate::report::{BlockedGate, Notice, PhaseDurations, Reporter};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// How long reporting may take before a reboot or a stop.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the API client from a kubeconfig. kube's own retry is off: a
/// PDB's 429 must reach the drain logic at once, not after minutes.
pub async fn kube_client(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    // A FIFO or device at the path would block the read below forever.
    crate::fileread::open_regular(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    config.default_retry = false;
    kube::Client::try_from(config).context("building the Kubernetes client")
}

pub(crate) fn node_name(configured: Option<&str>) -> anyhow::Result<String> {
    match configured {
        Some(n) => Ok(n.to_string()),
        None => Ok(nix::unistd::gethostname()
            .context("reading the host name")?
            .to_string_lossy()
            .to_lowercase()),
    }
}

/// Feeds the agent's events to the reporting sinks.
struct DaemonReporter {
    reporter: Reporter,
    node: String,
    /// The gates that blocked at the last evaluation, to log changes once.
    blocked: std::sync::Mutex<Vec<BlockedGate>>,
}

impl DaemonReporter {
    fn new(reporter: Reporter, node: &str) -> Self {
        DaemonReporter {
            reporter,
            node: node.to_string(),
            blocked: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// One journal line per gate that starts blocking (with its reason),
    /// and one when none blocks any more; the same verdict is not repeated.
    fn log_gates(&self, blocked: &[BlockedGate]) {
        let mut last = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_slice() == blocked {
            return;
        }
        for g in blocked.iter().filter(|g| !last.contains(g)) {
            info!(
                message_id = msgid::GATE_BLOCKED,
                node = %self.node,
                gate = %g.gate,
                reason = %g.reason,
                "gate {} blocks: {}",
                g.gate,
                g.reason
            );
        }
        if blocked.is_empty() {
            info!(
                message_id = msgid::GATES_PASS,
                node = %self.node,
                "every gate passes"
            );
        }
        *last = blocked.to_vec();
    }

    /// `ours`: this node halted (or un-halted) the fleet and tells people;
    /// otherwise it only saw the halt through its gate, and a halt already
    /// known (the reporter's view holds it) is not reported again.
    fn set_halted(&self, notice: Notice, ours: bool) {
        let halted = matches!(notice, Notice::Halted { .. });
        if ours || self.reporter.view().halted.is_some() != halted {
            if ours {
                self.reporter.notice(notice);
            } else {
                self.reporter.observed(notice);
            }
        }
    }
}

fn seconds(s: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(s).ok()
}

/// The agent's cycle durations as the reporter's phases (total: lease taken
/// to verified, so the wait for the lease is not part of it).
fn phase_durations(d: &AgentDurations) -> PhaseDurations {
    PhaseDurations {
        drain: seconds(d.drain_seconds),
        reboot: seconds(d.reboot_seconds),
        verify: seconds(d.verify_seconds),
        total: seconds(d.drain_seconds + d.reboot_seconds + d.verify_seconds),
    }
}

impl ReporterPort for DaemonReporter {
    fn status(&self, line: &str) {
        // systemd's STATUS= is exactly the agent's line.
        self.reporter.status(line);
    }

    fn gates(&self, gates: &[GateStatus]) {
        let blocked: Vec<BlockedGate> = gates
            .iter()
            // A gate skipped behind a cheaper block is not itself blocking.
            .filter(|g| !g.passed && !g.skipped)
            .map(|g| BlockedGate {
                gate: g.gate,
                reason: g.reason.clone(),
            })
            .collect();
        match gates.iter().find(|g| g.gate == GateName::Halted) {
            Some(g) if !g.passed && !g.skipped => self.set_halted(
                Notice::Halted {
                    node: "another node".into(),
                    reason: g.reason.clone(),
                },
                false,
            ),
            Some(g) if g.passed => self.set_halted(Notice::HaltCleared, false),
            Some(_) => {}
            None => {}
        }
        self.log_gates(&blocked);
        // Sent every time: an Idle or LeaseAcquired in between cleared the
        // gate metrics; the reporter itself skips unchanged Events.
        self.reporter.notice(Notice::Waiting { blocked });
    }

    fn event(&self, _node: &str, event: &AgentEvent) {
        let notice = match event {
            AgentEvent::UpToDate => Notice::Idle,
            AgentEvent::DrainProgress { pods_left } => Notice::Draining {
                pods_left: *pods_left,
            },
            AgentEvent::RebootNeeded { reasons } => Notice::RebootNeeded {
                reasons: reasons.clone(),
            },
            AgentEvent::LeaseAcquired { slot } => Notice::LeaseAcquired { slot: slot.clone() },
            AgentEvent::DrainTimedOut { blocking, report } => Notice::DrainFailed {
                reason: format!("drain timed out (before that: {report})"),
                blocking_pods: blocking.clone(),
            },
            AgentEvent::Drained { report } => Notice::Drained {
                summary: report.to_string(),
                forced: !report.deleted_pdb_blocked.is_empty(),
            },
            AgentEvent::DrainFailed { error } => Notice::Failed {
                step: "drain".into(),
                error: error.clone(),
            },
            AgentEvent::LeaseLost { slot, holder } => Notice::Failed {
                step: "lease".into(),
                error: format!("lease {slot} lost to {holder}; stopped out of service"),
            },
            AgentEvent::Rebooting { boot_id, .. } => Notice::Rebooting {
                boot_id: boot_id.clone(),
            },
            AgentEvent::RebootFailed { error } => Notice::Failed {
                step: "reboot".into(),
                error: error.clone(),
            },
            AgentEvent::Verified { durations } => Notice::Verified {
                durations: phase_durations(durations),
            },
            AgentEvent::VerifyFailed { reason } => Notice::VerifyFailed {
                reason: reason.clone(),
            },
            AgentEvent::Halted { reason } => {
                return self.set_halted(
                    Notice::Halted {
                        node: self.node.clone(),
                        reason: reason.clone(),
                    },
                    true,
                );
            }
            AgentEvent::HaltCleared => return self.set_halted(Notice::HaltCleared, true),
            AgentEvent::Released { .. } => Notice::Released,
            AgentEvent::StateChanged {
                to: crate::phase::Phase::Verifying,
                ..
            } => Notice::Verifying,
            AgentEvent::StateChanged { .. } => return,
            AgentEvent::UpgradeFailed { step, error } => Notice::Failed {
                step: format!("upgrade {step}"),
                error: error.clone(),
            },
            // In flight from the first finished step to the release; the
            // versions and the step go to the metrics and the report.
            AgentEvent::UpgradeStep { from, to, step } => Notice::Upgrading {
                from: from.clone(),
                to: to.clone(),
                step: step.clone(),
            },
            AgentEvent::UpgradeRefused { .. } => return,
        };
        self.reporter.notice(notice);
    }

    fn heartbeat(&self) {
        self.reporter.heartbeat();
    }

    async fn flush(&self) {
        self.reporter.flush(FLUSH_TIMEOUT).await;
    }
}

/// Keeps every installed protected package on dpkg hold: at start, after
/// each apt run (the hook's wake-up), on reload and every check interval
/// (an `apt-mark unhold` by hand is undone). Runs on its own store handle.
struct HoldKeeper {
    settings: Settings,
    store: Arc<std::sync::Mutex<Store>>,
    reporter: Reporter,
}

enum HoldsWake {
    AptRun,
    Reload(Box<Settings>),
}

impl HoldKeeper {
    fn open(settings: Settings, reporter: Reporter) -> anyhow::Result<HoldKeeper> {
        let store = Store::open(&settings.node.state_db).context("opening the state store")?;
        Ok(HoldKeeper {
            settings,
            store: Arc::new(std::sync::Mutex::new(store)),
            reporter,
        })
    }

    /// One reconciliation (dpkg runs off the async threads), reported:
    /// log, history, metrics. A failure is reported and retried later.
    /// Refusals the APT hook recorded since the last look are reported too.
    async fn reconcile(&self, trigger: &'static str) {
        let settings = self.settings.clone();
        let store = self.store.clone();
        let (outcome, refusals) = tokio::task::spawn_blocking(move || {
            let store = store.lock().unwrap_or_else(|p| p.into_inner());
            (reconcile_holds(&settings, &store), new_refusals(&store))
        })
        .await
        .unwrap_or_else(|e| (Err(anyhow::Error::from(e)), Ok(Vec::new())));
        match outcome {
            Ok(plan) => report_holds(&plan, trigger, &self.reporter),
            Err(e) => {
                self.reporter.holds(None);
                warn!(
                    message_id = msgid::HOLDS_FAILED,
                    trigger,
                    error = format!("{e:#}"),
                    "dpkg holds not reconciled, will retry: {e:#}"
                );
            }
        }
        match refusals {
            Ok(refusals) => self.report_refusals(refusals),
            Err(e) => warn!(
                error = format!("{e:#}"),
                "reading APT refusals from the history: {e:#}"
            ),
        }
    }

    /// A journal line for each apt run the hooks recorded, and for each
    /// refusal also the metric and an Event; once each: the last reported
    /// history id is kept in the store.
    fn report_refusals(&self, records: Vec<crate::store::HistoryRecord>) {
        let Some(last) = records.iter().map(|r| r.id).max() else {
            return;
        };
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        for r in &records {
            let command = r.detail["command"].as_str().unwrap_or("an apt run");
            if r.kind == APT_RUN_KIND {
                let line = crate::cli::history::line(r);
                info!(
                    message_id = msgid::APT_RUN_RECORDED,
                    history_id = r.id,
                    command,
                    "apt run recorded: {line}"
                );
                let provisioning = strings(&r.detail["provisioning"]);
                if !provisioning.is_empty() {
                    info!(
                        message_id = msgid::APT_PROVISIONING,
                        history_id = r.id,
                        packages = ?provisioning,
                        command,
                        "protected packages changed as provisioning (first install, or before join): {}",
                        provisioning.join("; ")
                    );
                }
                continue;
            }
            let refused = strings(&r.detail["summary"]);
            warn!(
                message_id = msgid::APT_REFUSED,
                history_id = r.id,
                packages = ?refused,
                command,
                "APT refused `{command}`: it would change protected packages: {}",
                refused.join("; ")
            );
            self.reporter.notice(Notice::AptRun {
                changed: Vec::new(),
                refused,
            });
        }
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = store.set(APT_REPORTED_KEY, &last) {
            warn!(error = %e, "remembering the reported apt runs: {e}");
        }
    }

    async fn run(mut self, mut wake: mpsc::Receiver<HoldsWake>) {
        let period = self.settings.reboot.check_interval;
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                _ = every.tick() => "periodic",
                w = wake.recv() => match w {
                    None => return,
                    Some(HoldsWake::AptRun) => "apt run",
                    Some(HoldsWake::Reload(new)) => {
                        self.settings = *new;
                        "configuration reload"
                    }
                },
            };
            self.reconcile(trigger).await;
        }
    }
}

/// Store key: the id of the last apt history entry (run or refusal) reported.
const APT_REPORTED_KEY: &str = "daemon.apt-history-reported";

/// Apt runs and refusals the hooks recorded since the last report.
fn new_refusals(store: &Store) -> anyhow::Result<Vec<crate::store::HistoryRecord>> {
    let seen: i64 = store.get(APT_REPORTED_KEY)?.unwrap_or(0);
    Ok(store
        .history(&[APT_RUN_KIND, APT_REFUSED_KIND], 200)?
        .into_iter()
        .filter(|r| r.id > seen)
        .collect())
}

fn reconcile_holds(settings: &Settings, store: &Store) -> anyhow::Result<HoldPlan> {
    let dpkg = Dpkg::new(&settings.packages.dpkg_root);
    let plan = aptgate::reconcile_holds(settings, store, &dpkg)?;
    if !plan.hold.is_empty() || !plan.release.is_empty() {
        store
            .append_history(
                "holds",
                &serde_json::json!({"held": plan.hold, "released": plan.release,
                    "held-by-admin": plan.held_by_admin}),
            )
            .context("recording the hold changes")?;
    }
    Ok(plan)
}

fn report_holds(plan: &HoldPlan, trigger: &str, reporter: &Reporter) {
    reporter.holds(Some((plan.made.len(), plan.held_by_admin.len())));
    if plan.hold.is_empty() && plan.release.is_empty() {
        tracing::debug!(trigger, protected = ?plan.protected, "dpkg holds already in place");
    } else {
        info!(
            message_id = msgid::HOLDS_RECONCILED,
            trigger,
            held = ?plan.hold,
            released = ?plan.release,
            held_by_admin = ?plan.held_by_admin,
            protected = ?plan.protected,
            "dpkg holds reconciled ({trigger}): held {:?}, released {:?}",
            plan.hold,
            plan.release
        );
    }
}

/// Why the agent loop stopped.
enum Stop {
    Terminate,
    /// SIGHUP (no one to answer) or `drydock reload` (answered).
    Reload(Option<reload::Request>),
    /// The drydock identity's certificate was renewed: new client.
    Renewed,
}

/// How often a node that has not joined looks for its kubeconfig.
const JOIN_POLL: Duration = Duration::from_secs(2);

/// The STATUS= line while the node has not joined the cluster.
pub(crate) fn not_joined_status(kubeconfig: &std::path::Path) -> String {
    format!("waiting: node not joined (no {})", kubeconfig.display())
}

/// Re-reads the configuration for a reload. `Err` carries the reason it
/// was refused; the running settings then stay.
fn reload_settings(cli: &Cli, running: &Settings) -> Result<(Settings, String), String> {
    let mut new = cli
        .load_settings()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let mut message = String::from("configuration reloaded");
    if new.node != running.node || new.report != running.report {
        message.push_str("; [node] and [report] changes take effect when drydock restarts");
    }
    // What the running daemon is bound to stays until a restart.
    new.node = running.node.clone();
    new.report = running.report.clone();
    Ok((new, message))
}

/// Logs a reload's outcome and answers whoever asked.
fn answer_reload(request: Option<reload::Request>, outcome: &Result<(Settings, String), String>) {
    let verdict = match outcome {
        Ok((_, message)) => {
            info!(message_id = msgid::RELOADED, "{message}");
            reload::Verdict {
                ok: true,
                message: message.clone(),
            }
        }
        Err(reason) => {
            error!(
                message_id = msgid::RELOAD_REFUSED,
                reason = %reason,
                "configuration reload refused, keeping the running settings: {reason}"
            );
            reload::Verdict {
                ok: false,
                message: format!("{reason}; the running settings stay"),
            }
        }
    };
    if let Some(request) = request {
        request.answer(verdict);
    }
}

/// A reload while there is no agent yet (before join, before the identity):
/// the holds follow the new settings at once, the agent starts with them.
fn reload_before_agent(
    cli: &Cli,
    settings: &mut Settings,
    holds_tx: &mpsc::Sender<HoldsWake>,
    request: Option<reload::Request>,
) {
    let outcome = reload_settings(cli, settings);
    if let Ok((new, _)) = &outcome {
        let _ = holds_tx.try_send(HoldsWake::Reload(Box::new(new.clone())));
        *settings = new.clone();
    }
    answer_reload(request, &outcome);
}

/// Waits for the next stop or reload request.
async fn next_stop(
    term: &mut tokio::signal::unix::Signal,
    hup: &mut tokio::signal::unix::Signal,
    reloads: &mut mpsc::Receiver<reload::Request>,
) -> Stop {
    tokio::select! {
        _ = term.recv() => Stop::Terminate,
        _ = tokio::signal::ctrl_c() => Stop::Terminate,
        _ = hup.recv() => Stop::Reload(None),
        Some(r) = reloads.recv() => Stop::Reload(Some(r)),
    }
}

pub(crate) async fn run(cli: &Cli, _args: &Args) -> anyhow::Result<ExitCode> {
    let mut settings = cli.load_settings().context("loading configuration")?;
    let _instance = DaemonLock::acquire(&settings.node.run_dir)?;
    let node = node_name(settings.node.name.as_deref())?;
    let reporter = Reporter::start(&settings, &node, None)
        .await
        .context("starting reporting")?;

    // Holds first: they protect the node even before it joined and while
    // the API is unreachable.
    let holds = HoldKeeper::open(settings.clone(), reporter.clone())?;
    holds.reconcile("start").await;
    let (holds_tx, holds_rx) = mpsc::channel(8);
    tokio::spawn(holds.run(holds_rx));

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut reloads = reload::listen(&settings.node.run_dir).with_context(|| {
        format!(
            "listening for reload requests on {}",
            reload::socket_path(&settings.node.run_dir).display()
        )
    })?;
    // The APT hook's post-invoke nudges us: holds again, and a new
    // reboot-required is seen at once.
    let nudge = std::sync::Arc::new(tokio::sync::Notify::new());
    match WakeListener::bind(&settings) {
        Ok(listener) => {
            let nudge = nudge.clone();
            let holds = holds_tx.clone();
            tokio::spawn(async move {
                while listener.recv().await.is_ok() {
                    let _ = holds.try_send(HoldsWake::AptRun);
                    nudge.notify_one();
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot listen for APT wake-ups; polling only"),
    }

    // Before `kubeadm join` there is no kubeconfig: that is the normal
    // first-boot order, not a failure. Hold packages, say so, and look again.
    let mut announced = None;
    let client = loop {
        let path = settings.node.kubeconfig.clone();
        let waiting = if path.exists() {
            match kube_client(&path).await {
                Ok(client) => break client,
                Err(e) => format!("waiting: kubeconfig {} unusable: {e:#}", path.display()),
            }
        } else {
            not_joined_status(&path)
        };
        if announced.as_ref() != Some(&waiting) {
            reporter.status(&waiting);
            if announced.is_none() {
                reporter.ready();
            }
            info!(
                message_id = msgid::WAITING_FOR_JOIN,
                node = %node,
                kubeconfig = %path.display(),
                "{waiting}"
            );
            announced = Some(waiting);
        }
        let stop = tokio::select! {
            _ = tokio::time::sleep(JOIN_POLL) => None,
            stop = next_stop(&mut term, &mut hup, &mut reloads) => Some(stop),
        };
        match stop {
            None => {}
            Some(Stop::Terminate | Stop::Renewed) => {
                reporter.shutdown(FLUSH_TIMEOUT).await;
                return Ok(ExitCode::SUCCESS);
            }
            Some(Stop::Reload(request)) => {
                reload_before_agent(cli, &mut settings, &holds_tx, request);
            }
        }
    };
    if announced.is_some() {
        info!(
            message_id = msgid::JOINED,
            node = %node,
            kubeconfig = %settings.node.kubeconfig.display(),
            "node joined: {} appeared; starting the agent",
            settings.node.kubeconfig.display()
        );
    }
    reporter.attach_kube(client.clone(), settings.report.kubernetes_events);

    // Nothing shared before the drydock identity exists (the status line says why).
    let identity_settings = settings.clone();
    let identity = super::identity::shared_client(&identity_settings, &node, client.clone(), |l| {
        reporter.status(l)
    });
    tokio::pin!(identity);
    let (mut shared, renewed) = loop {
        tokio::select! {
            r = &mut identity => break r?,
            stop = next_stop(&mut term, &mut hup, &mut reloads) => match stop {
                Stop::Terminate | Stop::Renewed => {
                    reporter.shutdown(FLUSH_TIMEOUT).await;
                    return Ok(ExitCode::SUCCESS);
                }
                Stop::Reload(request) => {
                    reload_before_agent(cli, &mut settings, &holds_tx, request);
                }
            },
        }
    };
    let store = Store::open(&settings.node.state_db).context("opening the state store")?;
    let mut agent = Agent::new(
        node.clone(),
        settings.clone(),
        store,
        NodeHost::new(settings.clone(), LogindRebooter::system()),
        KubeCluster::with_identity(
            client.clone(),
            shared.clone(),
            settings.clone(),
            node.clone(),
        ),
        DaemonReporter::new(reporter.clone(), &node),
    )?;
    let waker = agent.waker();
    tokio::spawn(async move {
        loop {
            nudge.notified().await;
            waker.notify_one();
        }
    });
    reporter.ready();
    info!(
        message_id = msgid::DAEMON_RUNNING,
        node = %node,
        state = agent.state().name(),
        "drydock daemon running on {node} (state {})",
        agent.state().name()
    );
    let result = loop {
        let mut stop = Stop::Terminate;
        let stopped = async {
            stop = tokio::select! {
                s = next_stop(&mut term, &mut hup, &mut reloads) => s,
                _ = renewed.notified() => Stop::Renewed,
            };
        };
        if let Err(e) = agent.run(stopped).await {
            break Err(e);
        }
        let request = match stop {
            Stop::Terminate => break Ok(()),
            Stop::Renewed => {
                let path = crate::cluster::identity::identity_kubeconfig(&settings);
                match kube_client(&path).await {
                    Ok(c) => {
                        shared = c;
                        agent.reconfigure(
                            settings.clone(),
                            NodeHost::new(settings.clone(), LogindRebooter::system()),
                            KubeCluster::with_identity(
                                client.clone(),
                                shared.clone(),
                                settings.clone(),
                                node.clone(),
                            ),
                        );
                        info!("using the renewed drydock identity");
                    }
                    Err(e) => error!(
                        error = format!("{e:#}"),
                        "the renewed drydock identity is unusable; keeping the old one"
                    ),
                }
                continue;
            }
            Stop::Reload(request) => request,
        };
        let outcome = reload_settings(cli, &settings);
        if let Ok((new, _)) = &outcome {
            let _ = holds_tx.try_send(HoldsWake::Reload(Box::new(new.clone())));
            agent.reconfigure(
                new.clone(),
                NodeHost::new(new.clone(), LogindRebooter::system()),
                KubeCluster::with_identity(
                    client.clone(),
                    shared.clone(),
                    new.clone(),
                    node.clone(),
                ),
            );
            settings = new.clone();
        }
        answer_reload(request, &outcome);
    };
    reporter.shutdown(FLUSH_TIMEOUT).await;
    result?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::RetryPolicy;
    use std::sync::atomic::Ordering;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    fn gate(name: &str, reason: &str) -> GateStatus {
        GateStatus {
            gate: name.parse().expect("a gate name"),
            passed: reason.is_empty(),
            reason: reason.into(),
            skipped: false,
        }
    }

    /// A reporter with its state DB in `dir` and no textfile, and the
    /// agent's port onto it.
    async fn reporter_on(dir: &std::path::Path, node: &str) -> (Reporter, DaemonReporter) {
        let mut settings = Settings::default();
        settings.node.state_db = dir.join("state.db");
        settings.report.textfile_dir = None;
        let reporter = Reporter::start_with(&settings, node, None, RetryPolicy::default())
            .await
            .unwrap();
        let port = DaemonReporter::new(reporter.clone(), node);
        (reporter, port)
    }

    #[tokio::test]
    async fn agent_events_reach_the_metrics_and_the_status_line() {
        let dir = tempfile::tempdir().unwrap();
        let (reporter, port) = reporter_on(dir.path(), "worker-1").await;

        // STATUS= is the agent's own line, word for word.
        port.status("waiting: window opens Tue 02:00 Europe/London");
        assert_eq!(
            reporter.status_line(),
            "waiting: window opens Tue 02:00 Europe/London"
        );

        // Each blocked gate is its own metric label.
        let blocked = [
            gate("window", "window opens Tue 02:00"),
            gate("alerts", "alert NodeDiskPressure firing"),
            gate("paused", ""),
            GateStatus {
                skipped: true,
                ..gate("nodes-ready", "not evaluated: soak blocks")
            },
        ];
        port.gates(&blocked);
        let t = reporter.metrics_text();
        assert_eq!(
            value(&t, r#"drydock_gate_blocked{gate="alerts"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&t, r#"drydock_gate_blocked{gate="window"}"#),
            Some(1.0)
        );
        assert_ne!(
            value(&t, r#"drydock_gate_blocked{gate="nodes-ready"}"#),
            Some(1.0),
            "a skipped gate is not blamed"
        );

        // A new cycle clears the gate metrics; the same block seen again is
        // shown again.
        port.event(
            "worker-1",
            &AgentEvent::StateChanged {
                from: crate::phase::Phase::Pending,
                to: crate::phase::Phase::Idle,
            },
        );
        port.event("worker-1", &AgentEvent::UpToDate);
        assert_eq!(
            value(
                &reporter.metrics_text(),
                r#"drydock_gate_blocked{gate="alerts"}"#
            ),
            Some(0.0)
        );
        port.gates(&blocked);
        assert_eq!(
            value(
                &reporter.metrics_text(),
                r#"drydock_gate_blocked{gate="alerts"}"#
            ),
            Some(1.0)
        );

        // Drain progress arrives as an event, not parsed from the line.
        port.event("worker-1", &AgentEvent::DrainProgress { pods_left: 3 });
        assert_eq!(
            value(
                &reporter.metrics_text(),
                r#"drydock_state{state="draining"}"#
            ),
            Some(1.0)
        );

        // Two reboots (two different boots) count twice.
        for boot in ["boot-a", "boot-b"] {
            port.event(
                "worker-1",
                &AgentEvent::Rebooting {
                    reason: "kernel".into(),
                    boot_id: boot.into(),
                },
            );
        }
        assert_eq!(
            value(&reporter.metrics_text(), "drydock_reboots_total"),
            Some(2.0)
        );

        // A halt seen through the gate, then lifted.
        port.gates(&[gate("halted", "fleet halted: worker-3 failed verification")]);
        assert_eq!(value(&reporter.metrics_text(), "drydock_halted"), Some(1.0));
        port.gates(&[gate("halted", "")]);
        assert_eq!(value(&reporter.metrics_text(), "drydock_halted"), Some(0.0));

        // Verified carries the phase durations.
        port.event(
            "worker-1",
            &AgentEvent::Verified {
                durations: AgentDurations {
                    wait_seconds: 100.0,
                    drain_seconds: 30.0,
                    reboot_seconds: 60.0,
                    verify_seconds: 10.0,
                },
            },
        );
        let t = reporter.metrics_text();
        assert_eq!(
            value(&t, r#"drydock_last_phase_duration_seconds{phase="drain"}"#),
            Some(30.0),
            "{t}"
        );
        assert_eq!(
            value(&t, r#"drydock_last_phase_duration_seconds{phase="total"}"#),
            Some(100.0)
        );
        reporter.shutdown(Duration::from_secs(1)).await;
    }

    /// The upgrade's events feed the version and in-flight metrics: the
    /// target and the kubelet's version while in flight, 0 once released.
    #[tokio::test]
    async fn upgrade_events_reach_the_version_and_in_flight_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let (reporter, port) = reporter_on(dir.path(), "cp-1").await;
        let t = reporter.metrics_text();
        assert_eq!(value(&t, "drydock_upgrade_in_flight"), Some(0.0), "{t}");
        assert!(
            !t.contains("drydock_kubernetes_target_version_info{"),
            "{t}"
        );
        for step in ["apt-source", "resolve-packages", "install-kubeadm"] {
            port.event(
                "cp-1",
                &AgentEvent::UpgradeStep {
                    from: "v1.34.2".into(),
                    to: "v1.35.2".into(),
                    step: step.into(),
                },
            );
        }
        let t = reporter.metrics_text();
        assert_eq!(value(&t, "drydock_upgrade_in_flight"), Some(1.0), "{t}");
        assert_eq!(
            value(
                &t,
                r#"drydock_kubernetes_target_version_info{version="v1.35.2"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            value(&t, r#"drydock_kubernetes_version_info{version="v1.34.2"}"#),
            Some(1.0),
            "{t}"
        );
        assert!(
            value(&t, "drydock_upgrade_started_timestamp_seconds").is_some_and(|v| v > 0.0),
            "{t}"
        );
        assert_eq!(
            value(&t, r#"drydock_state{state="upgrading"}"#),
            Some(1.0),
            "{t}"
        );
        // One step series: the last one finished.
        assert_eq!(
            value(&t, r#"drydock_upgrade_step_info{step="install-kubeadm"}"#),
            Some(1.0),
            "{t}"
        );
        assert!(
            !t.contains(r#"drydock_upgrade_step_info{step="apt-source"}"#),
            "{t}"
        );
        // The restarted kubelet's version is read back; the release ends it.
        reporter.kubernetes_versions(Some("v1.35.2"), None);
        port.event(
            "cp-1",
            &AgentEvent::Released {
                slot: "drydock-default-0".into(),
            },
        );
        let t = reporter.metrics_text();
        assert_eq!(value(&t, "drydock_upgrade_in_flight"), Some(0.0), "{t}");
        assert_eq!(
            value(&t, r#"drydock_kubernetes_version_info{version="v1.35.2"}"#),
            Some(1.0),
            "{t}"
        );
        assert!(!t.contains(r#"drydock_kubernetes_version_info{version="v1.34.2"}"#));
        assert!(!t.contains("drydock_upgrade_step_info{"), "{t}");
        reporter.shutdown(Duration::from_secs(1)).await;
    }

    /// Counts HTTP requests (webhook posts) and answers 200.
    async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = posts.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 65536];
                let _ = conn.read(&mut buf).await;
                count.fetch_add(1, Ordering::SeqCst);
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        (url, posts)
    }

    #[tokio::test]
    async fn a_halt_seen_through_the_gate_is_not_announced_by_every_node() {
        let dir = tempfile::tempdir().unwrap();
        let (url, posts) = webhook_receiver().await;
        let mut settings = Settings::default();
        settings.node.state_db = dir.path().join("state.db");
        settings.report.textfile_dir = None;
        settings.report.webhook_url = Some(crate::config::Secret::new(url));
        let reporter = Reporter::start_with(&settings, "worker-1", None, RetryPolicy::default())
            .await
            .unwrap();
        let port = DaemonReporter::new(reporter.clone(), "worker-1");

        port.gates(&[gate("halted", "fleet halted: worker-3 failed verification")]);
        port.gates(&[gate("halted", "")]);
        reporter.flush(Duration::from_secs(5)).await;
        assert_eq!(
            posts.load(Ordering::SeqCst),
            0,
            "only the halting node posts"
        );

        port.event(
            "worker-1",
            &AgentEvent::Halted {
                reason: "worker-1 failed verification".into(),
            },
        );
        reporter.flush(Duration::from_secs(5)).await;
        assert_eq!(
            posts.load(Ordering::SeqCst),
            1,
            "this node's own halt is announced"
        );
        assert_eq!(value(&reporter.metrics_text(), "drydock_halted"), Some(1.0));
        reporter.shutdown(Duration::from_secs(1)).await;
    }
}
