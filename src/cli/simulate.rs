//! `drydock simulate`: a rolling reboot of a simulated cluster, shown live.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::simulate::{self, Moment, SimulateOptions};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Nodes in the cluster; the first is the control plane.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// ReplicaSet pods per worker (under a maxUnavailable=1 PDB).
    #[arg(long, default_value_t = 2)]
    pub pods_per_node: usize,
    /// Lease slots: how many nodes may be out at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// This node comes back broken (its health checks fail): watch the fleet halt.
    #[arg(long, value_name = "NODE")]
    pub fail_verify: Option<String>,
    /// Soak after every reboot (stands in for the default 24h).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub soak: Duration,
    /// Upgrade Kubernetes to this version (like v1.35.2) instead of
    /// rebooting: control planes first, one at a time, then the workers.
    #[arg(long, value_name = "VERSION")]
    pub upgrade_to: Option<String>,
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let dir = tempfile_dir()?;
    let mut opts = SimulateOptions::new(dir.clone());
    opts.nodes = args.nodes.max(1);
    opts.pods_per_node = args.pods_per_node;
    opts.concurrency = args.concurrency.max(1);
    opts.fail_verify = args.fail_verify.clone();
    opts.soak = args.soak;
    opts.upgrade_to = args.upgrade_to.clone();
    println!(
        "simulating {} nodes, concurrency {}, soak {}; {}",
        opts.nodes,
        opts.concurrency,
        humantime::format_duration(opts.soak),
        match &opts.upgrade_to {
            Some(t) => format!("upgrading Kubernetes to {t}"),
            None => "every node needs a reboot".to_string(),
        }
    );
    let print = Arc::new(|m: &Moment| {
        println!("[{:>6.2}s] {:<10} {}", m.at.as_secs_f64(), m.node, m.what);
    });
    let report = simulate::run(opts, print).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    println!();
    println!(
        "{:<10} {:>8} {:>10} {:>10}  final state",
        "node", "reboots", "locked", "released"
    );
    for (node, t) in &report.nodes {
        let secs =
            |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64()));
        println!(
            "{:<10} {:>8} {:>10} {:>10}  {}",
            node,
            t.reboots,
            secs(t.locked_at),
            secs(t.released_at),
            t.final_state
        );
    }
    if args.upgrade_to.is_some() {
        println!(
            "\n/version {}; kubeadm-config {}; kubelets: {}",
            report.api_server,
            report.kubeadm_config.as_deref().unwrap_or("(none)"),
            report
                .kubelet_versions
                .iter()
                .map(|(n, v)| format!("{n} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "\nmost nodes out of service at once: {}; total {:.2}s",
        report.max_out_of_service,
        report.total.as_secs_f64()
    );
    if let Some(reason) = &report.halted {
        println!("fleet HALTED: {reason}");
        println!("(on a real node: fix it, then `drydock resume` there)");
    }
    Ok(if report.finished || report.halted.is_some() {
        ExitCode::SUCCESS
    } else {
        println!("the rollout did not finish in time");
        ExitCode::FAILURE
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("drydock-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
