//! `drydock sim serve`: run the Kubernetes API simulator until Ctrl-C, for
//! demos and for poking at it with kubectl.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::sim::Scenario;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SimServeArgs {
    /// Number of nodes; the first is the control plane.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,

    /// Write a kubeconfig for the simulator here (for kubectl).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig_out: Option<PathBuf>,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Pods of the `default/web` ReplicaSet per worker node (under a PDB
    /// with maxUnavailable 1); kube-proxy and calico-node run everywhere.
    #[arg(long, default_value_t = 2)]
    pub pods_per_node: usize,
}

pub(crate) async fn serve(args: SimServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let sim = Scenario::standard(args.nodes, args.pods_per_node)
        .start_on(args.listen)
        .await
        .context("starting the simulator")?;
    if let Some(path) = &args.kubeconfig_out {
        sim.write_kubeconfig(path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("kubeconfig: {}", path.display());
    }
    println!(
        "serving a {}-node simulated cluster at {}",
        args.nodes,
        sim.url()
    );
    tracing::info!(url = %sim.url(), nodes = args.nodes, "simulator running");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("\n{}", sim.stats());
    sim.stop().await;
    Ok(())
}
