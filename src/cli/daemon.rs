//! `drydock daemon`: the systemd service. Loads the config and state, then
//! drives this node's agent until SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use super::Cli;
use crate::agent::Agent;
use crate::agent::kube_cluster::KubeCluster;
use crate::agent::node_host::NodeHost;
use crate::agent::ports::{AgentEvent, Reporter as ReporterPort};
use crate::aptgate::WakeListener;
use crate::host::logind::LogindRebooter;
use crate::report::{BlockedGate, Notice, Reporter};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {}

/// Builds the API client from a kubeconfig. kube's own retry is off: a
/// PDB's 429 must reach the drain logic at once, not after minutes.
pub async fn kube_client(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    config.default_retry = false;
    kube::Client::try_from(config).context("building the Kubernetes client")
}

pub fn node_name(configured: Option<&str>) -> anyhow::Result<String> {
    match configured {
        Some(n) => Ok(n.to_string()),
        None => Ok(nix::unistd::gethostname()
            .context("reading the host name")?
            .to_string_lossy()
            .to_lowercase()),
    }
}

/// Feeds the agent's events to the reporting sinks.
struct DaemonReporter(Reporter);

impl ReporterPort for DaemonReporter {
    fn status(&self, line: &str) {
        if let Some(reason) = line.strip_prefix("waiting: ") {
            self.0.notice(Notice::Waiting {
                blocked: vec![BlockedGate {
                    gate: "gates".into(),
                    reason: reason.to_string(),
                }],
            });
        } else if let Some(left) = line
            .strip_prefix("draining: ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
        {
            self.0.notice(Notice::Draining { pods_left: left });
        } else if line.starts_with("idle") {
            self.0.notice(Notice::Idle);
        }
    }

    fn event(&self, _node: &str, event: &AgentEvent) {
        let notice = match event {
            AgentEvent::RebootNeeded { reasons } => Notice::RebootNeeded {
                reasons: reasons.clone(),
            },
            AgentEvent::LeaseAcquired { slot } => Notice::LeaseAcquired { slot: slot.clone() },
            AgentEvent::DrainTimedOut { blocking } => Notice::DrainFailed {
                reason: "drain timed out".into(),
                blocking_pods: blocking.clone(),
            },
            AgentEvent::Rebooting { reason } => Notice::Rebooting {
                boot_id: reason.clone(),
            },
            AgentEvent::RebootFailed { error } => Notice::Failed {
                step: "reboot".into(),
                error: error.clone(),
            },
            AgentEvent::VerifyFailed { reason } => Notice::VerifyFailed {
                reason: reason.clone(),
            },
            AgentEvent::Released { .. } => Notice::Released,
            AgentEvent::StateChanged { to, .. } if to == "verifying" => Notice::Verifying,
            AgentEvent::StateChanged { .. } | AgentEvent::Verified { .. } => return,
        };
        self.0.notice(notice);
    }
}

pub async fn run(cli: &Cli, _args: &Args) -> anyhow::Result<ExitCode> {
    let settings = cli.load_settings().context("loading configuration")?;
    let node = node_name(settings.node.name.as_deref())?;
    let store = Store::open(&settings.node.state_db).context("opening the state store")?;
    let client = kube_client(&settings.node.kubeconfig).await?;
    let reporter = Reporter::start(&settings, &node, Some(client.clone()))
        .await
        .context("starting reporting")?;
    reporter.ready();
    let host = NodeHost::new(settings.clone(), LogindRebooter::system());
    let cluster = KubeCluster::new(client, settings.clone(), node.clone());
    let mut agent = Agent::new(
        node.clone(),
        settings.clone(),
        store,
        host,
        cluster,
        DaemonReporter(reporter.clone()),
    )?;
    // The APT hook's post-invoke nudges us so a new reboot-required is seen at once.
    let waker = agent.waker();
    match WakeListener::bind(&settings) {
        Ok(listener) => {
            tokio::spawn(async move {
                while listener.recv().await.is_ok() {
                    waker.notify_one();
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot listen for APT wake-ups; polling only"),
    }
    info!(node = %node, "drydock daemon running");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let result = agent.run(shutdown).await;
    reporter.shutdown(Duration::from_secs(5)).await;
    result?;
    Ok(ExitCode::SUCCESS)
}
