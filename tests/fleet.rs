//! The whole fleet in the simulator: real agents, real Lease, drain and
//! gate code over HTTP; simulated machines.

use std::sync::Arc;
use std::time::Duration;

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

/// Every event of one agent.
#[derive(Clone, Default)]
struct Events(Arc<std::sync::Mutex<Vec<drydock::testing::agent::ports::AgentEvent>>>);

impl Events {
    fn count(&self, f: impl Fn(&drydock::testing::agent::ports::AgentEvent) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|e| f(e)).count()
    }
}

impl drydock::testing::agent::ports::Reporter for Events {
    fn status(&self, _line: &str) {}
    fn event(&self, _node: &str, event: &drydock::testing::agent::ports::AgentEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// Waits until `f` holds, or fails with `what`.
async fn until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An idle node makes no API request at all between its checks: the
/// upgrade target comes from its watch of the drydock Namespace (opened
/// with the drydock identity and the RBAC `drydock rbac` prints), and a
/// new target reaches its next check without a GET. Fails if an idle
/// agent polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_makes_no_requests_and_sees_a_new_target_through_its_watch() {
    use drydock::testing::agent::Agent;
    use drydock::testing::agent::kube_cluster::KubeCluster;
    use drydock::testing::agent::ports::AgentEvent;
    use drydock::testing::cluster::{annotations, identity};
    use drydock::testing::simulate::host::{Machine, SimHost};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, Patch, PatchParams};

    const NODE: &str = "worker-1";
    const CHECK: Duration = Duration::from_millis(100);
    let sim = drydock::testing::sim::Scenario::standard(3, 1)
        .start()
        .await
        .unwrap();
    sim.apply_manifests(&drydock::testing::cli::rbac::manifests(
        "drydock",
        identity::GROUP,
    ))
    .unwrap();
    let me = drydock::testing::sim::User::new(
        &format!("drydock:node:{NODE}"),
        &[identity::GROUP, "system:authenticated"],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut s = drydock::testing::config::Settings::default();
    s.node.name = Some(NODE.into());
    s.node.state_db = dir.path().join("state.db");
    s.node.run_dir = dir.path().join("run");
    s.reboot.check_interval = CHECK;
    s.reboot.check_kernel = false;
    s.reboot.sentinel_file = dir.path().join("reboot-required");
    s.report.textfile_dir = None;
    s.report.kubernetes_events = false;
    let machine = Arc::new(std::sync::Mutex::new(Machine {
        boot_id: uuid::Uuid::new_v4().to_string(),
        booted_at: jiff::Timestamp::now() - Duration::from_secs(3600),
        ..Machine::default()
    }));
    let (reboots, _reboots_rx) = tokio::sync::mpsc::unbounded_channel();
    let host = SimHost::new(NODE, machine, reboots);
    let cluster = KubeCluster::with_identity(
        sim.client().unwrap(),
        sim.client_as(&me).await.unwrap(),
        s.clone(),
        NODE.into(),
    );
    let events = Events::default();
    let store = drydock::testing::store::Store::open(&s.node.state_db).unwrap();
    let mut agent = Agent::new(NODE.into(), s, store, host, cluster, events.clone()).unwrap();
    let running = tokio::spawn(async move { agent.run(std::future::pending::<()>()).await });

    // Start-up: the first check reads the Namespace and opens the watch.
    until("the Namespace watch opens", Duration::from_secs(10), || {
        sim.stats().get("watch", "namespaces").requests > 0
    })
    .await;
    tokio::time::sleep(3 * CHECK).await;
    sim.reset_stats();
    let checks = events.count(|e| matches!(e, AgentEvent::UpToDate));
    tokio::time::sleep(20 * CHECK).await;
    let idle = sim.stats();
    let checked = events.count(|e| matches!(e, AgentEvent::UpToDate)) - checks;
    assert!(checked >= 10, "only {checked} checks in 20 intervals");
    assert_eq!(
        idle.total.requests, 0,
        "an idle agent made API requests over {checked} checks:\n{idle}"
    );

    // A target appears: the next check sees it (refused: not a version)
    // with no GET of the Namespace.
    let admin: Api<Namespace> = Api::all(sim.client().unwrap());
    let patch = serde_json::json!({"metadata": {"annotations": {annotations::KUBERNETES_VERSION: "1.35-latest"}}});
    admin
        .patch("drydock", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until(
        "the idle check sees the target",
        Duration::from_secs(10),
        || events.count(|e| matches!(e, AgentEvent::UpgradeRefused { .. })) > 0,
    )
    .await;
    running.abort();
    let stats = sim.stats();
    assert_eq!(
        stats.get("get", "namespaces").requests,
        0,
        "the target was read with a GET, not from the watch:\n{stats}"
    );
}
