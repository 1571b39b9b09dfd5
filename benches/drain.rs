//! Drain of one 110-pod node against the simulator, drydock beside real
//! `kubectl drain`, with and without a maxUnavailable=1 disruption budget:
//! wall time and API requests, side by side. Prints numbers, asserts nothing.
//!
//! `cargo bench --bench drain` (env `DRYDOCK_BENCH_RUNS`, default 3;
//! `DRYDOCK_BENCH_PODS`, default 110). kubectl is /usr/bin/kubectl or the
//! first on PATH; without it the kubectl column says so.
//!
//! drydock's side is what the daemon does: cordon through the agent's
//! cluster port, drain (progress forwarded to the real reporter, which
//! annotates the Node and records Events as in production). kubectl's side
//! is `kubectl drain --ignore-daemonsets --delete-emptydir-data` with a
//! discovery cache already warm (as on an admin's machine; the cold first
//! run is not counted).
#[path = "support/drain_bench.rs"]
mod drain_bench;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drain_bench::{drain_as_the_daemon, mean_by_endpoint, median};

use drydock::testing::agent::kube_cluster::KubeCluster;
use drydock::testing::agent::ports::DrainResult;
use drydock::testing::config::Settings;
use drydock::testing::report::Reporter;
use drydock::testing::sim::{ApiStats, PdbSpec, ReplicaSetSpec, Scenario, SimHandle};

const NODE: &str = "worker-1";

fn kubectl_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kubectl"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin/kubectl"))
        .chain(on_path)
        .find(|p| p.is_file())
}

async fn scenario(pods: usize, pdb: bool) -> SimHandle {
    let mut s = Scenario::cluster(1, 3).replica_set(
        ReplicaSetSpec::new("default", "web", pods).on_nodes(std::iter::repeat_n(NODE, pods)),
    );
    if pdb {
        s = s.pdb(
            PdbSpec::new("default", "web")
                .selector("app", "web")
                .max_unavailable(1),
        );
    }
    let sim = s.start().await.expect("simulator");
    // Let the controllers settle (PDB status, DaemonSets).
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim
}

struct Run {
    wall: Duration,
    stats: ApiStats,
}

async fn drydock_drain(pods: usize, pdb: bool) -> Run {
    let sim = scenario(pods, pdb).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::default();
    settings.node.state_db = dir.path().join("state.db");
    settings.report.textfile_dir = None;
    settings.drain.delete_emptydir_data = true;
    let mut config = sim.config();
    // As the daemon builds its client.
    config.default_retry = false;
    let client = kube::Client::try_from(config).expect("client");
    let reporter = Reporter::start(&settings, NODE, Some(client.clone()))
        .await
        .expect("reporter");
    let cluster = KubeCluster::new(client, settings, NODE.to_string());
    sim.reset_stats();
    let (wall, result) = drain_as_the_daemon(&cluster, &reporter, pods).await;
    match result {
        Ok(DrainResult::Drained(_)) => {}
        Ok(other) => eprintln!("drydock drain did not finish: {other:?}"),
        Err(e) => eprintln!("drydock drain failed: {e}"),
    }
    Run {
        wall,
        stats: sim.stats(),
    }
}

fn kubectl(bin: &std::path::Path, home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .arg("--kubeconfig")
        .arg(home.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl")
}

async fn kubectl_drain(bin: &std::path::Path, pods: usize, pdb: bool) -> Run {
    let sim = scenario(pods, pdb).await;
    let dir = tempfile::tempdir().expect("tempdir");
    sim.write_kubeconfig(dir.path().join("kubeconfig"))
        .expect("kubeconfig");
    let home = dir.path().to_path_buf();
    let b = bin.to_path_buf();
    // Warm the discovery cache, as on any admin's machine.
    let h = home.clone();
    tokio::task::spawn_blocking(move || kubectl(&b, &h, &["get", "nodes"]))
        .await
        .expect("join");
    sim.reset_stats();
    let started = Instant::now();
    let b = bin.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        kubectl(
            &b,
            &home,
            &[
                "drain",
                NODE,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=600s",
            ],
        )
    })
    .await
    .expect("join");
    let wall = started.elapsed();
    if !out.status.success() {
        eprintln!(
            "kubectl drain failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Run {
        wall,
        stats: sim.stats(),
    }
}

fn requests(r: &Run) -> u64 {
    r.stats.total.requests
}

/// Counts by (verb, resource) as "verb resource: n", largest first.
fn breakdown(runs: &[Run]) -> String {
    let mut sum = std::collections::BTreeMap::new();
    for r in runs {
        for ((verb, res), e) in &r.stats.by_endpoint {
            *sum.entry(format!("{verb} {res}")).or_default() += e.requests;
        }
    }
    mean_by_endpoint(sum, runs.len())
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("drain bench: run it with `cargo bench --bench drain`");
        return;
    }
    let runs: usize = std::env::var("DRYDOCK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let pods: usize = std::env::var("DRYDOCK_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(110);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kubectl = kubectl_binary();
    if kubectl.is_none() {
        println!("kubectl not found: only drydock's column is measured");
    }
    println!(
        "drain of one {pods}-pod node (simulator, grace period 1 s, replacement Ready 0.2 s after creation), median of {runs} runs"
    );
    println!(
        "{:<28} {:>12} {:>10} {:>12} {:>10} {:>12} {:>12}",
        "case", "drydock", "requests", "kubectl", "requests", "time ratio", "req. ratio"
    );
    for (label, pdb) in [("no PDB", false), ("PDB maxUnavailable=1", true)] {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..runs {
            ours.push(rt.block_on(drydock_drain(pods, pdb)));
            if let Some(bin) = &kubectl {
                theirs.push(rt.block_on(kubectl_drain(bin, pods, pdb)));
            }
        }
        let ow = median(ours.iter().map(|r| r.wall.as_secs_f64()).collect());
        let orq = median(ours.iter().map(|r| requests(r) as f64).collect());
        let (tw, trq) = if theirs.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (
                median(theirs.iter().map(|r| r.wall.as_secs_f64()).collect()),
                median(theirs.iter().map(|r| requests(r) as f64).collect()),
            )
        };
        println!(
            "{:<28} {:>11.1}s {:>10.0} {:>11.1}s {:>10.0} {:>12.2} {:>12.2}",
            label,
            ow,
            orq,
            tw,
            trq,
            ow / tw,
            orq / trq
        );
        println!("  drydock per run: {}", breakdown(&ours));
        if !theirs.is_empty() {
            println!("  kubectl per run: {}", breakdown(&theirs));
        }
    }
}
