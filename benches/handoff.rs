//! Lease hand-off over a 20-node rollout (concurrency 1), real agents
//! against the simulator: the time from one node giving its slot back
//! (`-> idle` after the release) to the next node holding it (`-> locked`).
//! Printed as p50 / p99 / max; asserts nothing.
//!
//! `cargo bench --bench handoff`; `DRYDOCK_BENCH_NODES=N` changes the fleet.
//!
//! Two timings: the check interval sets the herd jitter (a waiter pauses
//! up to min(1 s, interval / 2) after a Lease change) and the spread of the
//! wake-ups at the end of a soak (min(60 s, interval / 5)). With a 2 s
//! interval the jitter is production's 1 s; the soak-end spread is 0.4 s
//! here against 60 s in production, so the soak case is also run at the
//! production interval (5 min).

use std::sync::Arc;
use std::time::Duration;

use drydock::testing::simulate::{self, FleetReport, SimulateOptions};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Each node's (locked, released) moments, in order of locking.
fn lock_spans(r: &FleetReport) -> Vec<(Duration, Duration)> {
    let mut spans: Vec<(Duration, Duration)> = r
        .nodes
        .values()
        .filter_map(|t| Some((t.locked_at?, t.released_at?)))
        .collect();
    spans.sort();
    spans
}

/// Gaps between one node's release and the next node's lock, in seconds.
fn handoffs(r: &FleetReport) -> Vec<f64> {
    let spans = lock_spans(r);
    let mut gaps: Vec<f64> = spans
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].1).as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    gaps
}

fn main() {
    // `cargo test --all-targets` runs bench targets too (without `--bench`):
    // this one takes minutes, so it runs only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "{}: run it with cargo bench (three 20-node rollouts)",
            env!("CARGO_CRATE_NAME")
        );
        return;
    }
    let nodes: usize = std::env::var("DRYDOCK_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("Lease hand-off, {nodes}-node rollout, concurrency 1, simulator + real agents");
    println!(
        "{:<46} {:>8} {:>8} {:>8} {:>10} {:>6}",
        "case", "p50 s", "p99 s", "max s", "rollout s", "gaps"
    );
    let cases = [
        ("no soak, check interval 2 s", Duration::ZERO, 2),
        (
            "soak 0.5 s, check interval 2 s",
            Duration::from_millis(500),
            2,
        ),
        (
            "soak 0.5 s, check interval 5 min (production)",
            Duration::from_millis(500),
            300,
        ),
    ];
    for (label, soak, interval) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = SimulateOptions::new(dir.path().to_path_buf());
        o.nodes = nodes;
        o.pods_per_node = 2;
        o.concurrency = 1;
        o.soak = soak;
        o.check_interval = Duration::from_secs(interval);
        o.deadline = Some(Duration::from_secs(60 + 30 * nodes as u64));
        let r = rt
            .block_on(simulate::run(o, Arc::new(|_| {})))
            .expect("simulate");
        let gaps = handoffs(&r);
        println!(
            "{:<46} {:>8.2} {:>8.2} {:>8.2} {:>10.1} {:>6}{}",
            label,
            percentile(&gaps, 0.5),
            percentile(&gaps, 0.99),
            gaps.last().copied().unwrap_or(f64::NAN),
            r.total.as_secs_f64(),
            gaps.len(),
            if r.finished { "" } else { "  (did not finish)" }
        );
        if std::env::var_os("DRYDOCK_HANDOFF_SHOW").is_some() {
            show_slowest(&r);
        }
    }
}

/// `DRYDOCK_HANDOFF_SHOW=1`: what happened during the slowest hand-off.
fn show_slowest(r: &FleetReport) {
    let spans = lock_spans(r);
    let Some((from, to)) = spans
        .windows(2)
        .map(|w| (w[0].1, w[1].0))
        .max_by_key(|(a, b)| b.saturating_sub(*a))
    else {
        return;
    };
    for m in &r.moments {
        if m.at + Duration::from_secs(2) >= from && m.at <= to {
            println!("    {:>8.3} {} {}", m.at.as_secs_f64(), m.node, m.what);
        }
    }
}
