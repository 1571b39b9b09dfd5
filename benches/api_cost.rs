//! API cost of the gate and Lease steps against the simulator, at 20, 100
//! and 200 nodes: requests and bytes per step, as drydock issues them.
//! `cargo bench --bench api_cost`. (The agent's full reboot cycle is to be
//! added on top of these steps.)

use std::time::Duration;

use drydock::cluster::lease::LeaseClient;
use drydock::cluster::observe::observe;
use drydock::config::Settings;
use drydock::gates::{self, AlertObservation, LocalObservation};
use drydock::sim::{ApiStats, Scenario, SimHandle};
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
    let sizes = [20, 100, 200];
    let results: Vec<Vec<Row>> = sizes.iter().map(|n| rt.block_on(run(*n))).collect();
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
