//! The daemon's two credentials, and `drydock cluster approve NODE`.
//!
//! The kubelet's kubeconfig is used for this node's own things; the drydock
//! identity (an administrator's kubeconfig, or the enrolled certificate)
//! for what is shared. On control-plane nodes (kubeadm's admin kubeconfig
//! present) the daemon also approves the nodes' identity requests.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tracing::info;

use super::Cli;
use super::daemon::kube_client;
use crate::cluster::identity::{self, Enroller};
use crate::config::Settings;

/// How often a node waiting for approval looks again.
const ENROL_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub(crate) struct ApproveArgs {
    /// The node whose pending drydock identity request to approve.
    pub node: String,
    /// An administrator's kubeconfig (default: node.admin-kubeconfig).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// The drydock identity's client, once it exists: the node waits here
/// (saying so on its status line) and does nothing shared before.
/// `renewed` is notified when a renewed certificate replaced the old one.
pub(crate) async fn shared_client(
    settings: &Settings,
    node: &str,
    kubelet: kube::Client,
    status: impl Fn(&str),
) -> anyhow::Result<(kube::Client, Arc<Notify>)> {
    let renewed = Arc::new(Notify::new());
    if let Some(admin) = &settings.node.admin_kubeconfig
        && admin.exists()
    {
        let client = kube_client(admin).await?;
        info!(kubeconfig = %admin.display(), "approving drydock identity requests on this control-plane node");
        tokio::spawn(identity::run_approver(client));
    }
    if let Some(own) = &settings.node.identity_kubeconfig {
        info!(kubeconfig = %own.display(), "drydock identity from the configured kubeconfig");
        return Ok((kube_client(own).await?, renewed));
    }
    let dir = &settings.node.identity_dir;
    let enroller = Enroller::new(kubelet.clone(), &settings.node.kubeconfig, node, dir);
    let ready = identity::wait_ready(&enroller, &status, ENROL_RETRY).await;
    let identity::Progress::Ready { kubeconfig, .. } = ready else {
        unreachable!("wait_ready returns only when ready")
    };
    let client = kube_client(&kubeconfig).await?;
    let notify = renewed.clone();
    let renewer = Enroller::new(kubelet, &settings.node.kubeconfig, node, dir);
    tokio::spawn(identity::keep_renewed(
        renewer,
        move || notify.notify_one(),
        ENROL_RETRY.max(Duration::from_secs(60)),
    ));
    Ok((client, renewed))
}

/// A client of the drydock identity as it stands now (CLI commands).
pub(crate) async fn current_client(settings: &Settings) -> anyhow::Result<kube::Client> {
    let path = identity::identity_kubeconfig(settings);
    // Missing, not merely unreadable: a dangling symlink or a loop is read
    // below and refused with its own reason.
    if std::fs::symlink_metadata(&path).is_err() {
        anyhow::bail!(
            "this node has no drydock identity yet ({} is missing); `drydock status` on the running daemon says why",
            path.display()
        );
    }
    kube_client(&path).await
}

pub(crate) async fn approve(cli: &Cli, args: &ApproveArgs) -> anyhow::Result<ExitCode> {
    crate::config::values::dns_subdomain(&args.node)
        .map_err(|e| anyhow::anyhow!("node name {:?}: {e}", args.node))?;
    let path = match (&args.kubeconfig, cli.load_settings()) {
        (Some(p), _) => p.clone(),
        (None, Ok(s)) => s.node.admin_kubeconfig.context(
            "node.admin-kubeconfig is empty; give an administrator's kubeconfig with --kubeconfig",
        )?,
        (None, Err(e)) => return Err(e).context("loading configuration"),
    };
    let admin = kube_client(&path).await?;
    let (approved, refused) = identity::approve_pending(&admin, Some(&args.node))
        .await
        .with_context(|| format!("approving the drydock identity of node {}", args.node))?;
    for name in &approved {
        println!(
            "approved CSR {name} (drydock identity of node {})",
            args.node
        );
    }
    for (name, why) in &refused {
        println!("not approved: CSR {name}: {why}");
    }
    if approved.is_empty() {
        eprintln!(
            "drydock: no pending drydock identity request of node {} passes the checks",
            args.node
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
