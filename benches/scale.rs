//! Scale: a fleet of simulated nodes, every one needing a reboot, rolled
//! through by real agents (one per node, over HTTP) at a given concurrency.
//! Prints whether the rollout completed, the API cost per reboot, and how
//! busy the simulator itself was, to show whether it is the bottleneck;
//! asserts nothing.
//!
//! `cargo bench --bench scale` runs 500 nodes at concurrency 5, then at 1;
//! `DRYDOCK_SCALE_CASES=200x5,500x1` picks other cases (nodes x concurrency).
//! `DRYDOCK_SCALE_DEADLINE=900` stops each case after that many seconds
//! (the cost per reboot and the pace are then from the reboots done, with
//! every other node waiting all along): 500 nodes at concurrency 1 is 500
//! cycles in turn.
//!
//! Is the simulator the bottleneck? Every request and every step of its
//! own controllers runs under one lock on its state: the time that lock
//! was held, over the wall time, is how busy its serial part was (100 %
//! would make it the bottleneck). Encoding a response happens outside it
//! and is in the per-request handling times.

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
    let deadline = std::env::var("DRYDOCK_SCALE_DEADLINE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    for (nodes, concurrency) in cases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = SimulateOptions::new(dir.path().to_path_buf());
        o.nodes = nodes;
        o.pods_per_node = 2;
        o.concurrency = concurrency;
        o.soak = Duration::from_millis(200);
        o.check_interval = Duration::from_secs(2);
        o.deadline = deadline;
        // 500 agents share one process with the simulator: with the quick
        // runs' 5 s Lease, starved keepers missed renewals and every expiry
        // sent the waiters to a full gate look (production: 120 s).
        o.lease_duration = Duration::from_secs(30);
        let load0 = loadavg();
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
        let run = r.total.as_secs_f64();
        println!(
            "{nodes} nodes, concurrency {concurrency}: {} ({reboots} reboots, never more than {} out of service) in {run:.0} s, {:.2} s per reboot",
            if r.finished {
                "completed"
            } else {
                "DID NOT COMPLETE"
            },
            r.max_out_of_service,
            run / per,
        );
        if !r.finished && reboots > 0 {
            let left = nodes as f64 - f64::from(reboots);
            println!(
                "  at that pace the other {left:.0} reboots would take {:.0} s more ({:.0} s in all)",
                left * run / per,
                nodes as f64 * run / per,
            );
        }
        println!(
            "  load average: {load0} at the start, {} at the end",
            loadavg()
        );
        println!(
            "  API per reboot: {:.1} requests, {:.1} KiB; {:.2} Node lists ({:.1} KiB each), {:.1} Lease requests, {:.1} Namespace reads",
            t.requests as f64 / per,
            t.response_bytes as f64 / per / 1024.0,
            lists.requests as f64 / per,
            lists.response_bytes as f64 / lists.requests.max(1) as f64 / 1024.0,
            r.api.resource("leases").requests as f64 / per,
            r.api.get("get", "namespaces").requests as f64 / per,
        );
        let mut top: Vec<_> = r.api.by_endpoint.iter().collect();
        top.sort_by_key(|(_, e)| std::cmp::Reverse(e.requests));
        let top: Vec<String> = top
            .iter()
            .take(8)
            .map(|((v, res), e)| {
                format!(
                    "{v} {res} {:.1} ({:.1} KiB)",
                    e.requests as f64 / per,
                    e.response_bytes as f64 / per / 1024.0
                )
            })
            .collect();
        println!("  most requested, per reboot: {}", top.join(", "));
        println!(
            "  simulator: its state locked {:.1} s of {wall:.0} s ({:.1} % of the wall time: its serial part); handlers {:.1} s in all (mean {:.2} ms, slowest {:.1} ms per request, waits for the lock and the CPU included)",
            r.api.state_held_micros as f64 / 1e6,
            100.0 * r.api.state_held_micros as f64 / 1e6 / wall,
            t.handling_micros as f64 / 1e6,
            t.handling_micros as f64 / 1e3 / t.requests.max(1) as f64,
            t.max_handling_micros as f64 / 1e3,
        );
        println!(
            "  this process (simulator + {nodes} agents): {cpu:.0} s CPU in {wall:.0} s ({:.0} % of one core, 2 cores)",
            100.0 * cpu / wall
        );
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
