//! Scale: a fleet of simulated nodes, every one needing a reboot, rolled
//! through by real agents (one per node, over HTTP) at a given concurrency.
//! Prints whether the rollout completed, the API cost per reboot, and how
//! busy the simulator itself was, to show it is not the bottleneck;
//! asserts nothing.
//!
//! `cargo bench --bench scale` runs 500 nodes at concurrency 5, then at 1;
//! `DRYDOCK_SCALE_CASES=200x5,500x1` picks other cases (nodes x concurrency).
//! 500 nodes at concurrency 1 takes about 500 reboot cycles end to end
//! (tens of minutes on a 2-core machine).

#[path = "../tests/support/procstat.rs"]
mod procstat;

use std::sync::Arc;
use std::time::{Duration, Instant};

use procstat::cpu_seconds;

use drydock::testing::simulate::{self, SimulateOptions};

fn cases() -> Vec<(usize, u32)> {
    let text = std::env::var("DRYDOCK_SCALE_CASES").unwrap_or_else(|_| "500x5,500x1".into());
    text.split(',')
        .filter_map(|c| {
            let (n, k) = c.trim().split_once('x')?;
            Some((n.parse().ok()?, k.parse().ok()?))
        })
        .collect()
}

fn main() {
    // `cargo test --all-targets` runs bench targets too (without `--bench`):
    // this one takes minutes, so it runs only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "{}: run it with cargo bench (500-node rollouts)",
            env!("CARGO_CRATE_NAME")
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for (nodes, concurrency) in cases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = SimulateOptions::new(dir.path().to_path_buf());
        o.nodes = nodes;
        o.pods_per_node = 2;
        o.concurrency = concurrency;
        o.soak = Duration::from_millis(200);
        o.check_interval = Duration::from_secs(2);
        let cpu0 = cpu_seconds("self");
        let t0 = Instant::now();
        let r = rt
            .block_on(simulate::run(o, Arc::new(|_| {})))
            .expect("simulate");
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds("self") - cpu0;
        let reboots: u32 = r.nodes.values().map(|t| t.reboots).sum();
        let per = f64::from(reboots.max(1));
        let t = r.api.total;
        let lists = r.api.get("list", "nodes");
        println!(
            "{nodes} nodes, concurrency {concurrency}: {} ({reboots} reboots, never more than {} out of service) in {:.0} s, {:.2} s per reboot",
            if r.finished {
                "completed"
            } else {
                "DID NOT COMPLETE"
            },
            r.max_out_of_service,
            r.total.as_secs_f64(),
            r.total.as_secs_f64() / per,
        );
        println!(
            "  API per reboot: {:.1} requests, {:.1} KiB, {:.2} Node lists ({:.1} KiB each)",
            t.requests as f64 / per,
            t.response_bytes as f64 / per / 1024.0,
            lists.requests as f64 / per,
            lists.response_bytes as f64 / lists.requests.max(1) as f64 / 1024.0,
        );
        println!(
            "  simulator: {:.1} s producing responses in {wall:.0} s ({:.1} % of the wall time; mean {:.2} ms, slowest {:.1} ms per request)",
            t.handling_micros as f64 / 1e6,
            100.0 * t.handling_micros as f64 / 1e6 / wall,
            t.handling_micros as f64 / 1e3 / t.requests.max(1) as f64,
            t.max_handling_micros as f64 / 1e3,
        );
        println!(
            "  this process (simulator + {nodes} agents): {cpu:.0} s CPU in {wall:.0} s ({:.0} % of one core, 2 cores)",
            100.0 * cpu / wall
        );
    }
}
