//! The whole fleet in the simulator: real agents, real Lease, drain and
//! gate code over HTTP; simulated machines.

use std::sync::Arc;

use drydock::testing::simulate::{self, SimulateOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_reboot_once_each_never_two_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimulateOptions::new(dir.path().to_path_buf());
    opts.nodes = 10;
    opts.pods_per_node = 1;
    opts.deadline = Some(std::time::Duration::from_secs(90));
    let report = simulate::run(opts, Arc::new(|_| {})).await.unwrap();
    assert!(report.finished, "rollout finished: {:#?}", report.nodes);
    assert_eq!(report.max_out_of_service, 1, "never two nodes out at once");
    assert_eq!(report.nodes.len(), 10);
    for (node, t) in &report.nodes {
        assert_eq!(t.reboots, 1, "{node} rebooted exactly once");
        assert_eq!(t.final_state, "idle", "{node}");
    }
    assert!(report.halted.is_none());
    // Lease order: each node locked only after the previous one released.
    let mut spans: Vec<_> = report
        .nodes
        .values()
        .map(|t| (t.locked_at.unwrap(), t.released_at.unwrap()))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping cycles: {pair:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_failing_verification_halts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimulateOptions::new(dir.path().to_path_buf());
    opts.nodes = 4;
    opts.pods_per_node = 1;
    opts.fail_verify = Some("cp-1".into());
    opts.verify_timeout = std::time::Duration::from_secs(1);
    let report = simulate::run(opts, Arc::new(|_| {})).await.unwrap();
    let cp = &report.nodes["cp-1"];
    assert_eq!(cp.final_state, "failed");
    let halted = report.halted.expect("fleet halted");
    assert!(halted.contains("cp-1"), "{halted}");
    let others_rebooted: u32 = report
        .nodes
        .iter()
        .filter(|(n, _)| *n != "cp-1")
        .map(|(_, t)| t.reboots)
        .sum();
    // cp-1 is the first to go (it wins the first lease race only sometimes),
    // so nobody may reboot after the failure.
    let failed_at = report
        .moments
        .iter()
        .find(|m| m.node == "cp-1" && m.what == "-> failed")
        .map(|m| m.at)
        .unwrap();
    assert!(
        !report
            .moments
            .iter()
            .any(|m| m.at > failed_at && m.what == "-> locked"),
        "no node took a lease after the halt"
    );
    assert!(others_rebooted <= 3);
}
