//! API cost against the simulator at 20, 100 and 200 nodes, as drydock
//! issues it: first per step (gates, Lease), then per reboot with real agents
//! running full reboot cycles, then per waiting node while a gate blocks.
//! `cargo bench --bench api_cost`.

use std::sync::Arc;
use std::time::Duration;

use drydock::testing::cluster::lease::LeaseClient;
use drydock::testing::cluster::observe::observe;
use drydock::testing::config::Settings;
use drydock::testing::gates::{self, AlertObservation, LocalObservation};
use drydock::testing::sim::{ApiStats, Scenario, SimHandle};
use drydock::testing::simulate::{self, FleetBlock, FleetReport, SimulateOptions};
use jiff::Timestamp;

struct Row {
    step: &'static str,
    stats: ApiStats,
}

async fn measure<F, Fut>(sim: &SimHandle, step: &'static str, rows: &mut Vec<Row>, f: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    sim.reset_stats();
    f().await;
    rows.push(Row {
        step,
        stats: sim.stats(),
    });
}

async fn run(nodes: usize) -> Vec<Row> {
    let sim = Scenario::standard(nodes, 2).start().await.expect("sim");
    // Let the ReplicaSet and DaemonSet pods come up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = sim.client().expect("client");
    let mut s = Settings::default();
    s.gates.soak = Duration::ZERO;
    s.gates.blocking_pod_selectors = vec!["app=backup".into()];
    let me = "worker-1";
    let lease = LeaseClient::new(client.clone(), &s, me);
    let other = LeaseClient::new(client.clone(), &s, "worker-2");
    let mut rows = Vec::new();

    measure(&sim, "local gates", &mut rows, || async {
        let r = gates::evaluate_local(&s, &LocalObservation::default(), Timestamp::now());
        assert!(gates::all_pass(&r));
    })
    .await;
    measure(&sim, "lease slots (waiting node)", &mut rows, || async {
        lease.slots().await.expect("slots");
    })
    .await;
    measure(&sim, "observe + cluster gates", &mut rows, || async {
        let obs = observe(&client, &s, me).await.expect("observe");
        let r =
            gates::evaluate_cluster(&s, &obs, &AlertObservation::NotConfigured, Timestamp::now());
        assert!(gates::all_pass(&r), "{r:?}");
    })
    .await;
    let mut held = None;
    measure(&sim, "acquire", &mut rows, || async {
        held = lease.acquire(true).await.expect("acquire");
    })
    .await;
    let mut held = held.expect("slot free");
    measure(&sim, "renew", &mut rows, || async {
        lease.renew(&mut held).await.expect("renew");
    })
    .await;
    measure(
        &sim,
        "other node: acquire (slot taken)",
        &mut rows,
        || async {
            assert!(other.acquire(true).await.expect("acquire").is_none());
        },
    )
    .await;
    let waiter = other.wait_for_change(Duration::from_secs(10));
    sim.reset_stats();
    let (changed, ()) = tokio::join!(waiter, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        lease.release(&held).await.expect("release");
    });
    assert!(changed.expect("wait"));
    rows.push(Row {
        step: "release + other's watch wake-up",
        stats: sim.stats(),
    });
    rows
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("API cost per step (simulator, kube client), requests / response bytes");
    println!(
        "{:<36} {:>16} {:>16} {:>16}",
        "step", "20 nodes", "100 nodes", "200 nodes"
    );
    let results: Vec<Vec<Row>> = SIZES.iter().map(|n| rt.block_on(run(*n))).collect();
    for (i, row) in results[0].iter().enumerate() {
        let cells: Vec<String> = results
            .iter()
            .map(|rows| {
                let t = rows[i].stats.total;
                format!("{} / {}", t.requests, human_bytes(t.response_bytes))
            })
            .collect();
        println!(
            "{:<36} {:>16} {:>16} {:>16}",
            row.step, cells[0], cells[1], cells[2]
        );
    }
    println!("\nobserve() by endpoint at 200 nodes:");
    print!("{}", results[2][2].stats);

    reboot_cycles(&rt);
    waiting(&rt);
}

const SIZES: [usize; 3] = [20, 100, 200];
/// Nodes needing a reboot in the rollout measurements.
const ROLLOUT: usize = 10;
/// Scaled down from 5 min so the bench ends in minutes; it sets the herd
/// jitter (1 s, as in production), the soak-end spread (400 ms here, 60 s in
/// production) and the blocked re-check (1-2 s here, 90-180 s in production).
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

fn options(dir: &std::path::Path, nodes: usize, needing: usize) -> SimulateOptions {
    let mut o = SimulateOptions::new(dir.to_path_buf());
    o.nodes = nodes;
    o.pods_per_node = 2;
    o.needing_reboot = Some(needing);
    o.check_interval = CHECK_INTERVAL;
    o.soak = Duration::from_secs(1);
    o.deadline = Some(Duration::from_secs(120));
    o
}

fn fleet(rt: &tokio::runtime::Runtime, opts: SimulateOptions) -> FleetReport {
    rt.block_on(simulate::run(opts, Arc::new(|_| {})))
        .expect("simulate")
}

/// requests / bytes [node lists], divided by `per`.
fn cell(stats: &ApiStats, per: f64) -> String {
    let t = stats.total;
    format!(
        "{:.0} / {} [{:.1}]",
        t.requests as f64 / per,
        human_bytes((t.response_bytes as f64 / per) as u64),
        stats.get("list", "nodes").requests as f64 / per
    )
}

fn reboot_cycles(rt: &tokio::runtime::Runtime) {
    println!("\nFull reboot cycles, real agents (drain, reboot, verify, soak 1 s), per reboot:");
    println!(
        "requests / response bytes (watch streams included) [full gate evaluations = Node lists]"
    );
    println!(
        "{:<34} {:>24} {:>24} {:>24}",
        "", "20 nodes", "100 nodes", "200 nodes"
    );
    let mut solo = Vec::new();
    let mut rollout = Vec::new();
    for n in SIZES {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = fleet(rt, options(dir.path(), n, 1));
        assert!(r.finished, "solo reboot at {n} nodes did not finish");
        solo.push(r);
        let dir = tempfile::tempdir().expect("tempdir");
        let r = fleet(rt, options(dir.path(), n, ROLLOUT));
        assert!(r.finished, "rollout at {n} nodes did not finish");
        assert_eq!(r.max_out_of_service, 1);
        rollout.push(r);
    }
    let reboots = |r: &FleetReport| r.nodes.values().map(|t| t.reboots).sum::<u32>() as f64;
    let row = |label: &str, cells: Vec<String>| {
        println!(
            "{:<34} {:>24} {:>24} {:>24}",
            label, cells[0], cells[1], cells[2]
        )
    };
    row(
        "1 node alone (its own cost)",
        solo.iter().map(|r| cell(&r.api, reboots(r))).collect(),
    );
    row(
        &format!("{ROLLOUT} nodes in turn, per reboot"),
        rollout.iter().map(|r| cell(&r.api, reboots(r))).collect(),
    );
    row(
        "  of which waiters (difference)",
        solo.iter()
            .zip(&rollout)
            .map(|(s, r)| {
                let per = |x: &FleetReport, f: fn(&ApiStats) -> u64| f(&x.api) as f64 / reboots(x);
                let req = per(r, |a| a.total.requests) - per(s, |a| a.total.requests);
                let bytes = per(r, |a| a.total.response_bytes) - per(s, |a| a.total.response_bytes);
                let lists = per(r, |a| a.get("list", "nodes").requests)
                    - per(s, |a| a.get("list", "nodes").requests);
                format!(
                    "{req:.0} / {} [{lists:.1}]",
                    human_bytes(bytes.max(0.0) as u64)
                )
            })
            .collect(),
    );
    // Waiters that found a slot free, then lost it to another node taking
    // it first (a Lease list and a Namespace GET each, no Node list: only
    // a node holding a slot asks the expensive gates).
    let lost_races = |r: &FleetReport| {
        r.moments
            .iter()
            .filter(|m| m.what.contains("another node took the lease first"))
            .count() as f64
            / reboots(r)
    };
    row(
        "  waiters' lost races per reboot",
        rollout
            .iter()
            .map(|r| format!("{:.1}", lost_races(r)))
            .collect(),
    );
    row(
        "rollout wall time",
        rollout
            .iter()
            .map(|r| format!("{:.1} s", r.total.as_secs_f64()))
            .collect(),
    );
    println!("\n{ROLLOUT}-node rollout at 200 nodes by endpoint:");
    print!("{}", rollout[2].api);
}

fn waiting(rt: &tokio::runtime::Runtime) {
    /// The agents' first look (all at once, before anyone shared a verdict)
    /// is left out: this measures the steady state of a long block.
    const WARM_UP: Duration = Duration::from_secs(4);
    const WINDOW: Duration = Duration::from_secs(12);
    /// The re-check period here (min(180 s, check interval)) and in production.
    const RECHECK: Duration = CHECK_INTERVAL;
    const PRODUCTION_RECHECK: Duration = Duration::from_secs(180);
    let scale = PRODUCTION_RECHECK.as_secs_f64() / RECHECK.as_secs_f64();
    let periods = |window: Duration| window.as_secs_f64() / RECHECK.as_secs_f64();
    println!(
        "\nWaiting on a blocked gate ({ROLLOUT} agents, {} s after a {} s warm-up):",
        WINDOW.as_secs(),
        WARM_UP.as_secs()
    );
    println!(
        "requests / response bytes [Node lists], per waiting node per re-check, then for all {ROLLOUT} waiters"
    );
    println!(
        "per hour, scaled to production timing (re-checks every {} s, not {} s). Nobody holds a slot",
        PRODUCTION_RECHECK.as_secs(),
        RECHECK.as_secs()
    );
    println!(
        "while the gate blocks, so the waiters' Lease watches see no renewals; their watch requests count."
    );
    println!(
        "{:<34} {:>24} {:>24} {:>24}",
        "", "20 nodes", "100 nodes", "200 nodes"
    );
    let blocks = [
        (
            "cluster paused (Namespace only)",
            FleetBlock::Paused("bench".into()),
        ),
        (
            "a node NotReady (verdict shared)",
            FleetBlock::NodeNotReady("worker-9".into()),
        ),
    ];
    for (label, block) in blocks {
        let mut per_check = Vec::new();
        let mut per_hour = Vec::new();
        let mut lists = Vec::new();
        for n in SIZES {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut o = options(dir.path(), n, ROLLOUT);
            o.block = Some(block.clone());
            o.stats_after = WARM_UP;
            o.deadline = Some(WARM_UP + WINDOW);
            let r = fleet(rt, o);
            assert!(!r.finished && r.nodes.values().all(|t| t.reboots == 0));
            // Every re-check reads the drydock Namespace exactly once.
            let checks = r.api.get("get", "namespaces").requests as f64;
            per_check.push(cell(&r.api, checks));
            let hours = r.api_window.as_secs_f64() * scale / 3600.0;
            per_hour.push(format!(
                "{:.0} / {}",
                r.api.total.requests as f64 / hours,
                human_bytes((r.api.total.response_bytes as f64 / hours) as u64)
            ));
            lists.push(format!(
                "{:.2}",
                r.api.get("list", "nodes").requests as f64 / periods(r.api_window)
            ));
        }
        let row = |label: &str, cells: &[String]| {
            println!(
                "{:<34} {:>24} {:>24} {:>24}",
                label, cells[0], cells[1], cells[2]
            )
        };
        row(label, &per_check);
        row(&format!("  all {ROLLOUT} waiters per hour"), &per_hour);
        row("  Node lists per re-check period", &lists);
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}
