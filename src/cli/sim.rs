//! `drydock sim serve` (placeholder until the simulator lands; owned by the simulator work).

#[derive(Debug, Clone, clap::Args)]
pub struct SimServeArgs {
    /// Number of nodes; the first is the control plane.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
}

pub async fn serve(_args: SimServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet")
}
