//! What the drain benches on the simulator and on the real control plane
//! share, so both time and count the same thing: the drain as the daemon
//! runs it (cordon through the agent's cluster port, drain with a held
//! slot, "pods left" forwarded to the real reporter: Node annotation,
//! Events), and how runs are summarised.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drydock::testing::agent::kube_cluster::KubeCluster;
use drydock::testing::agent::ports::{Cluster, DrainResult};
use drydock::testing::cluster::lease::Claim;
use drydock::testing::report::{Notice, Reporter};

/// Cordons and drains this node; returns the wall time from the cordon to
/// the drain's end and how it ended (the reporter is flushed after).
pub(crate) async fn drain_as_the_daemon(
    cluster: &KubeCluster,
    reporter: &Reporter,
    pods: usize,
) -> (Duration, Result<DrainResult, String>) {
    let (_claim_tx, claim) = tokio::sync::watch::channel(Claim::Held {
        slot: "drydock-default-0".into(),
        expires_at: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
    });
    let (progress, mut rx) = tokio::sync::watch::channel(usize::MAX);
    let started = Instant::now();
    cluster.set_unschedulable(true).await.expect("cordon");
    reporter.notice(Notice::Draining { pods_left: pods });
    let drain = cluster.drain(progress, claim);
    tokio::pin!(drain);
    let result = loop {
        tokio::select! {
            r = &mut drain => break r,
            Ok(()) = rx.changed() => {
                let left = *rx.borrow_and_update();
                if left != usize::MAX {
                    reporter.notice(Notice::Draining { pods_left: left });
                }
            }
        }
    };
    let wall = started.elapsed();
    reporter.flush(Duration::from_secs(5)).await;
    (wall, result.map_err(|e| e.to_string()))
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Requests per run by endpoint ("verb resource: n"), largest first.
pub(crate) fn mean_by_endpoint(sum: BTreeMap<String, u64>, runs: usize) -> String {
    let mut v: Vec<_> = sum.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    let n = runs.max(1) as f64;
    v.iter()
        .map(|(k, c)| format!("{k}: {:.0}", *c as f64 / n))
        .collect::<Vec<_>>()
        .join(", ")
}
