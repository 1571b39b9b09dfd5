//! The cluster-wide gates end to end: `observe()` against the simulator
//! through the real kube client, then `evaluate_cluster()`. Each test
//! changes one thing in the cluster and checks the gate that must notice it.

use std::time::Duration;

use drydock::testing::cluster::annotations;
use drydock::testing::cluster::observe::{ObserveError, observe};
use drydock::testing::config::{NamespacedName, Settings};
use drydock::testing::gates::{self, AlertObservation, GateReport};
use drydock::testing::sim::{NodeSpec, PodSpec, Scenario, SimHandle};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn settings() -> Settings {
    let mut s = Settings::default();
    s.gates.soak = Duration::ZERO;
    s
}

async fn evaluate(sim: &SimHandle, s: &Settings, node: &str) -> Vec<GateReport> {
    let obs = observe(&sim.client().expect("client"), s, node)
        .await
        .expect("observe");
    gates::evaluate_cluster(s, &obs, &AlertObservation::NotConfigured, Timestamp::now())
}

fn blocked<'a>(reports: &'a [GateReport], gate: &str) -> Option<&'a str> {
    reports
        .iter()
        .find(|r| r.gate == gate)
        .unwrap_or_else(|| panic!("no gate {gate} in {reports:?}"))
        .verdict
        .reason()
}

fn only_block(reports: &[GateReport]) -> (&'static str, String) {
    let blocks: Vec<_> = reports.iter().filter(|r| !r.verdict.passes()).collect();
    assert_eq!(blocks.len(), 1, "{reports:#?}");
    (
        blocks[0].gate,
        blocks[0].verdict.reason().unwrap().to_string(),
    )
}

#[tokio::test]
async fn healthy_cluster_passes_with_a_fixed_number_of_requests() -> TestResult {
    let sim = Scenario::standard(6, 1).start().await?;
    let mut s = settings();
    s.gates.required_daemonsets = vec![
        NamespacedName {
            namespace: "kube-system".into(),
            name: "calico-node".into(),
        },
        NamespacedName {
            namespace: "kube-system".into(),
            name: "kube-proxy".into(),
        },
    ];
    s.gates.required_daemonsets_configured = true;
    s.gates.blocking_pod_selectors = vec!["app=backup".into()];
    // Let the DaemonSet pods start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.reset_stats();
    let reports = evaluate(&sim, &s, "worker-1").await;
    assert!(gates::all_pass(&reports), "{reports:#?}");
    let stats = sim.stats();
    // 1 node list, 1 namespace get, 2 x (DaemonSet get + pod list), 1 pod
    // list for the blocking selector: 7, whatever the cluster size.
    assert_eq!(stats.get("list", "nodes").requests, 1, "{stats}");
    assert_eq!(stats.get("get", "namespaces").requests, 1, "{stats}");
    assert_eq!(stats.get("get", "daemonsets").requests, 2, "{stats}");
    assert_eq!(stats.get("list", "pods").requests, 3, "{stats}");
    assert_eq!(stats.total.requests, 7, "{stats}");
    Ok(())
}

#[tokio::test]
async fn not_ready_node_blocks_and_node_selector_limits_it() -> TestResult {
    let sim = Scenario::new()
        .node(NodeSpec::worker("a-1").label("pool", "a"))
        .node(NodeSpec::worker("a-2").label("pool", "a"))
        .node(NodeSpec::worker("b-1").label("pool", "b"))
        .start()
        .await?;
    let mut s = settings();
    assert!(gates::all_pass(&evaluate(&sim, &s, "a-1").await));
    sim.set_node_ready("b-1", false)?;
    let (gate, reason) = only_block(&evaluate(&sim, &s, "a-1").await);
    assert_eq!(gate, "nodes-ready");
    assert!(reason.starts_with("node b-1 NotReady for "), "{reason}");
    s.gates.node_selector = "pool=a".into();
    assert!(gates::all_pass(&evaluate(&sim, &s, "a-1").await));
    s.gates.node_selector = "pool=c".into();
    let (gate, reason) = only_block(&evaluate(&sim, &s, "a-1").await);
    assert_eq!(gate, "nodes-ready");
    assert_eq!(reason, "no nodes match gates.node-selector \"pool=c\"");
    Ok(())
}

#[tokio::test]
async fn daemonset_pod_not_ready_blocks_missing_configured_one_too() -> TestResult {
    let sim = Scenario::standard(3, 0).start().await?;
    let s = settings();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gates::all_pass(&evaluate(&sim, &s, "worker-1").await));
    let pod = sim
        .pods_on_node("worker-2")
        .into_iter()
        .find(|p| {
            p.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .starts_with("calico-node")
        })
        .expect("calico pod on worker-2");
    let pod_name = pod.metadata.name.clone().unwrap();
    sim.set_pod_ready("kube-system", &pod_name, false)?;
    let (gate, reason) = only_block(&evaluate(&sim, &s, "worker-1").await);
    assert_eq!(gate, "daemonsets");
    // The DaemonSet status may or may not have caught up; either way the
    // reason names calico-node, and the pod when the status lags.
    assert!(
        reason.starts_with("DaemonSet kube-system/calico-node: "),
        "{reason}"
    );
    assert!(
        reason.contains("of 3 pods ready")
            || reason.contains(&format!("pod {pod_name} on worker-2 not Ready")),
        "{reason}"
    );

    // Default list, no such DaemonSet: passes ("when present")...
    let bare = Scenario::cluster(1, 1).start().await?;
    assert!(gates::all_pass(&evaluate(&bare, &s, "worker-1").await));
    // ...but one the operator listed must exist.
    let mut configured = settings();
    configured.gates.required_daemonsets_configured = true;
    let (gate, reason) = only_block(&evaluate(&bare, &configured, "worker-1").await);
    assert_eq!(gate, "daemonsets");
    assert_eq!(reason, "DaemonSet kube-system/calico-node not found");
    Ok(())
}

#[tokio::test]
async fn cluster_pause_halt_and_finished_reboot_annotations() -> TestResult {
    let sim = Scenario::cluster(0, 2).start().await?;
    let client = sim.client()?;
    let mut s = settings();

    annotations::pause_cluster(&client, "drydock", "change freeze until Monday").await?;
    let (gate, reason) = only_block(&evaluate(&sim, &s, "worker-1").await);
    assert_eq!(gate, "cluster-paused");
    assert!(
        reason.starts_with("paused cluster-wide: change freeze until Monday"),
        "{reason}"
    );
    annotations::resume_cluster(&client, "drydock").await?;
    assert!(gates::all_pass(&evaluate(&sim, &s, "worker-1").await));

    annotations::halt(
        &client,
        "drydock",
        "worker-2 failed verification: kubelet not Ready",
    )
    .await?;
    let reports = evaluate(&sim, &s, "worker-1").await;
    assert_eq!(gates::first_block(&reports).unwrap().gate, "halted");
    assert!(
        blocked(&reports, "halted")
            .unwrap()
            .contains("worker-2 failed verification"),
        "{reports:?}"
    );
    annotations::clear_halt(&client, "drydock").await?;

    // A reboot finished 10 minutes ago; soak 1h blocks, soak 5m passes.
    let ten_min_ago = Timestamp::now() - jiff::SignedDuration::from_mins(10);
    annotations::record_reboot_finished(&client, "drydock", "worker-2", ten_min_ago).await?;
    // An older record does not overwrite the newer one.
    let older = ten_min_ago - jiff::SignedDuration::from_hours(5);
    annotations::record_reboot_finished(&client, "drydock", "worker-1", older).await?;
    let ns: Namespace = Api::all(client.clone()).get("drydock").await?;
    let value = ns.metadata.annotations.unwrap()[annotations::LAST_REBOOT_FINISHED].clone();
    assert!(value.ends_with(" worker-2"), "{value}");

    s.gates.soak = Duration::from_secs(3600);
    // (The fresh nodes' Ready transitions are within the soak as well.)
    let reports = evaluate(&sim, &s, "worker-1").await;
    let reason = blocked(&reports, "soak").expect("soak blocks");
    assert!(
        reason.contains("drydock reboot of worker-2 finished 10m ago; soak (1h) ends in 50m"),
        "{reason}"
    );
    s.gates.soak = Duration::from_secs(300);
    let reports = evaluate(&sim, &s, "worker-1").await;
    let reason = blocked(&reports, "soak").unwrap_or_default();
    assert!(!reason.contains("drydock reboot"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn recent_ready_transition_blocks_the_soak() -> TestResult {
    let sim = Scenario::cluster(0, 2).start().await?;
    let mut s = settings();
    s.gates.soak = Duration::from_secs(3600);
    // Fresh nodes just became Ready: within the soak.
    let reports = evaluate(&sim, &s, "worker-1").await;
    let reason = blocked(&reports, "soak").expect("soak blocks");
    assert!(
        reason.starts_with("2 nodes changed Ready condition within the soak (1h): "),
        "{reason}"
    );
    // Condition times have whole seconds: keep clear of that rounding.
    s.gates.soak = Duration::from_secs(2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(gates::all_pass(&evaluate(&sim, &s, "worker-1").await));
    sim.set_node_ready("worker-2", false)?;
    sim.set_node_ready("worker-2", true)?;
    let (gate, reason) = only_block(&evaluate(&sim, &s, "worker-1").await);
    assert_eq!(gate, "soak");
    assert!(
        reason.starts_with("node worker-2 Ready condition changed "),
        "{reason}"
    );
    Ok(())
}

#[tokio::test]
async fn blocking_pods_only_on_this_node_and_only_while_running() -> TestResult {
    let sim = Scenario::cluster(0, 2).namespace("batch").start().await?;
    let mut s = settings();
    s.gates.blocking_pod_selectors = vec!["app=backup".into(), "drydock.dev/block".into()];
    sim.add_pod(PodSpec::new("batch", "nightly-backup", "worker-1").label("app", "backup"))?;
    let (gate, reason) = only_block(&evaluate(&sim, &s, "worker-1").await);
    assert_eq!(gate, "blocking-pods");
    assert_eq!(
        reason,
        "blocking pod batch/nightly-backup on this node (selector \"app=backup\")"
    );
    // Another node is not blocked by it.
    assert!(gates::all_pass(&evaluate(&sim, &s, "worker-2").await));
    // A finished pod no longer blocks.
    sim.set_pod_phase("batch", "nightly-backup", "Succeeded")?;
    assert!(gates::all_pass(&evaluate(&sim, &s, "worker-1").await));
    Ok(())
}

#[tokio::test]
async fn missing_namespace_or_unreachable_api_is_an_error_not_a_pass() -> TestResult {
    let sim = Scenario::cluster(0, 1).start().await?;
    let client = sim.client()?;
    let mut s = settings();
    s.lease.namespace = "elsewhere".into();
    match observe(&client, &s, "worker-1").await {
        Err(e @ ObserveError::NamespaceMissing { .. }) => {
            assert!(
                e.to_string().contains("kubectl create namespace elsewhere"),
                "{e}"
            )
        }
        other => panic!("expected NamespaceMissing, got {other:?}"),
    }
    sim.stop().await;
    let err = observe(&client, &settings(), "worker-1")
        .await
        .expect_err("API down");
    assert!(err.to_string().starts_with("listing nodes: "), "{err}");
    let reports = gates::cluster_unavailable(&err);
    assert!(!gates::all_pass(&reports));
    let reason = reports[0].verdict.reason().unwrap();
    assert!(
        reason.starts_with("cannot read the cluster: listing nodes: "),
        "{reason}"
    );
    Ok(())
}

/// Cheap first: when the drydock Namespace alone blocks (soak after a
/// finished reboot, pause), the agent's cluster gates make one small GET
/// and list no Nodes or pods.
#[tokio::test]
async fn namespace_block_costs_one_get_and_lists_nothing() -> TestResult {
    use drydock::testing::agent::kube_cluster::KubeCluster;
    use drydock::testing::agent::ports::Cluster;
    let sim = Scenario::standard(20, 1).start().await?;
    let client = sim.client()?;
    let mut s = settings();
    s.gates.soak = Duration::from_secs(3600);
    let cluster = KubeCluster::new(client.clone(), s.clone(), "worker-1".into());
    let finished = Timestamp::now() - jiff::SignedDuration::from_mins(10);
    annotations::record_reboot_finished(&client, "drydock", "worker-2", finished).await?;

    sim.reset_stats();
    let soak = cluster.cluster_gates(Timestamp::now()).await;
    let stats = sim.stats();
    assert_eq!(stats.total.requests, 1, "{stats}");
    assert_eq!(stats.get("get", "namespaces").requests, 1, "{stats}");
    let block = soak.gates.iter().find(|g| !g.passed).expect("soak blocks");
    assert_eq!(block.gate, "soak");
    assert!(block.reason.contains("soak (1h) ends in 50m"), "{block:?}");
    let nodes_ready = soak.gates.iter().find(|g| g.gate == "nodes-ready").unwrap();
    assert_eq!(nodes_ready.reason, "not evaluated: soak blocks");
    assert_eq!(
        soak.blocked_until,
        Some(finished + jiff::SignedDuration::from_hours(1))
    );

    annotations::pause_cluster(&client, "drydock", "change freeze").await?;
    sim.reset_stats();
    let paused = cluster.cluster_gates(Timestamp::now()).await;
    assert_eq!(sim.stats().total.requests, 1);
    assert_eq!(
        paused.gates.iter().find(|g| !g.passed).unwrap().gate,
        "cluster-paused"
    );
    assert_eq!(paused.blocked_until, None, "a pause has no known end");

    // Nothing on the Namespace blocks: the full evaluation, Node list
    // included. The simulated nodes all became Ready just now, so the soak
    // still blocks, on their Ready transitions, until an hour from now.
    annotations::resume_cluster(&client, "drydock").await?;
    let past = Timestamp::now() - jiff::SignedDuration::from_hours(2);
    annotations::set(
        &client,
        "drydock",
        annotations::LAST_REBOOT_FINISHED,
        Some(&format!("{past} worker-2")),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.reset_stats();
    let full = cluster.cluster_gates(Timestamp::now()).await;
    let stats = sim.stats();
    let blocks: Vec<_> = full.gates.iter().filter(|g| !g.passed).collect();
    assert_eq!(blocks.len(), 1, "{full:?}");
    assert!(
        blocks[0]
            .reason
            .contains("nodes changed Ready condition within the soak"),
        "{full:?}"
    );
    let until = full.blocked_until.expect("the soak's end is known");
    let left = until.duration_since(Timestamp::now());
    assert!(
        left > jiff::SignedDuration::from_mins(59) && left <= jiff::SignedDuration::from_hours(1),
        "{left:?}"
    );
    assert_eq!(stats.get("list", "nodes").requests, 1, "{stats}");
    assert_eq!(stats.get("get", "namespaces").requests, 1, "{stats}");
    Ok(())
}

/// A cluster-wide block with no known end (a node NotReady) is shared on
/// the drydock Namespace: of the waiting nodes, one lists the Nodes per
/// re-check period and the others stop at the Namespace GET. The shared
/// verdict only delays: once it runs out, each node's own evaluation
/// decides, and an unreadable one is ignored.
#[tokio::test]
async fn a_blocked_verdict_is_shared_so_one_waiter_lists_nodes_per_recheck() -> TestResult {
    use drydock::testing::agent::kube_cluster::KubeCluster;
    use drydock::testing::agent::ports::{Cluster, ClusterGates, GateStatus};
    let sim = Scenario::standard(20, 1).start().await?;
    let client = sim.client()?;
    let s = settings();
    // Let the DaemonSet pods start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set_node_ready("worker-9", false)?;
    let waiters: Vec<KubeCluster> = (1..=8)
        .map(|i| KubeCluster::new(client.clone(), s.clone(), format!("worker-{i}")))
        .collect();
    let secs = |n: i64| jiff::SignedDuration::from_secs(n);
    let block = |g: &ClusterGates| GateStatus::first_block(&g.gates).cloned();
    // The default re-check: min(180 s, the 5 min check interval).
    let recheck = secs(180);

    // Period 1: worker-1 looks first, the others follow within seconds.
    let t0 = Timestamp::now();
    sim.reset_stats();
    for (i, w) in waiters.iter().enumerate() {
        let g = w.cluster_gates(t0 + secs(i as i64)).await;
        let b = block(&g).expect("blocked");
        assert_eq!(b.gate, "nodes-ready", "{g:?}");
        assert!(b.reason.starts_with("node worker-9 NotReady"), "{b:?}");
        if i == 0 {
            assert!(!b.reason.contains("seen by"), "{b:?}");
        } else {
            assert!(
                b.reason.ends_with(&format!("(seen by worker-1 {i}s ago)")),
                "{b:?}"
            );
            assert!(
                g.gates.iter().any(|g| g.gate == "alerts" && g.skipped),
                "{g:?}"
            );
        }
        // Everyone, the writer too, comes back when the verdict runs out.
        assert_eq!(g.blocked_until, Some(t0 + recheck), "{i}");
    }
    let stats = sim.stats();
    assert_eq!(stats.get("list", "nodes").requests, 1, "{stats}");
    assert_eq!(stats.get("get", "namespaces").requests, 8, "{stats}");
    assert_eq!(stats.get("patch", "namespaces").requests, 1, "{stats}");
    let ns: Namespace = Api::all(client.clone()).get("drydock").await?;
    let raw = ns.metadata.annotations.unwrap_or_default()[annotations::CLUSTER_BLOCKED].clone();
    let shared = annotations::SharedBlock::parse(&raw).expect("readable");
    assert_eq!(
        (shared.gate.as_str(), shared.by.as_str()),
        ("nodes-ready", "worker-1")
    );

    // Period 2, after it ran out: whoever looks first (worker-5) evaluates
    // and shares again; still one Node list for the eight.
    let t1 = t0 + recheck + secs(5);
    sim.reset_stats();
    for (i, w) in waiters.iter().cycle().skip(4).take(8).enumerate() {
        let g = w.cluster_gates(t1 + secs(i as i64)).await;
        let b = block(&g).expect("blocked");
        if i > 0 {
            assert!(
                b.reason.ends_with(&format!("(seen by worker-5 {i}s ago)")),
                "{b:?}"
            );
        }
        assert_eq!(g.blocked_until, Some(t1 + recheck));
    }
    let stats = sim.stats();
    assert_eq!(stats.get("list", "nodes").requests, 1, "{stats}");
    assert_eq!(
        stats.total.requests,
        8 + 3 + 1,
        "8 GETs, one full evaluation (Node list, calico-node get + pod list), one PATCH: {stats}"
    );

    // worker-9 is back. The shared verdict still delays (never longer than
    // it says); it is not re-checked against the cluster by the readers.
    sim.set_node_ready("worker-9", true)?;
    let g = waiters[0].cluster_gates(t1 + secs(60)).await;
    assert!(
        block(&g).unwrap().reason.contains("seen by worker-5"),
        "{g:?}"
    );
    // Once it ran out, every node decides for itself, and a pass is not
    // shared. (First let the calico-node pod on worker-9 become Ready again.)
    for _ in 0..50 {
        if gates::all_pass(&evaluate(&sim, &s, "worker-1").await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t2 = t1 + recheck + secs(1);
    sim.reset_stats();
    for w in &waiters {
        let g = w.cluster_gates(t2).await;
        assert_eq!(block(&g), None, "{g:?}");
        assert_eq!(g.blocked_until, None);
    }
    let stats = sim.stats();
    assert_eq!(stats.get("list", "nodes").requests, 8, "{stats}");
    assert_eq!(stats.get("patch", "namespaces").requests, 0, "{stats}");

    // Garbage, or a verdict reached under other gate settings, is ignored:
    // the node evaluates in full (and here passes).
    let current = annotations::SharedBlock {
        at: t2 - secs(10),
        until: t2 + secs(100),
        ..shared.clone()
    };
    let other_settings = annotations::SharedBlock {
        scope: "0000000000000000".into(),
        ..current.clone()
    };
    for (value, honoured) in [
        ("not json".to_string(), false),
        (other_settings.to_annotation(), false),
        // The same, under this node's settings: honoured (the control case).
        (current.to_annotation(), true),
    ] {
        annotations::set(
            &client,
            "drydock",
            annotations::CLUSTER_BLOCKED,
            Some(&value),
        )
        .await?;
        sim.reset_stats();
        let g = waiters[2].cluster_gates(t2).await;
        let lists = sim.stats().get("list", "nodes").requests;
        if honoured {
            assert!(
                block(&g)
                    .unwrap()
                    .reason
                    .contains("seen by worker-1 10s ago"),
                "{g:?}"
            );
            assert_eq!(lists, 0);
        } else {
            assert_eq!(block(&g), None, "{value}: {g:?}");
            assert_eq!(lists, 1);
        }
    }
    Ok(())
}

/// The same with real agents (driver, pacing, Lease watch): while a node is
/// NotReady, the waiting fleet lists the Nodes about once per re-check
/// period, not once per waiter per re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_agents_share_one_node_list_per_recheck() -> TestResult {
    use drydock::testing::simulate::{self, FleetBlock, SimulateOptions};
    const AGENTS: usize = 6;
    let dir = tempfile::tempdir()?;
    let mut o = SimulateOptions::new(dir.path().to_path_buf());
    o.nodes = 20;
    o.pods_per_node = 1;
    o.needing_reboot = Some(AGENTS);
    // Re-check period min(180 s, 1 s) = 1 s.
    o.check_interval = Duration::from_secs(1);
    o.soak = Duration::ZERO;
    o.block = Some(FleetBlock::NodeNotReady("worker-9".into()));
    o.stats_after = Duration::from_secs(2);
    o.deadline = Some(Duration::from_secs(8));
    let r = simulate::run(o, std::sync::Arc::new(|_| {})).await?;
    assert!(r.nodes.values().all(|t| t.reboots == 0), "{:?}", r.nodes);
    let periods = r.api_window.as_secs_f64();
    let lists = r.api.get("list", "nodes").requests as f64;
    let checks = r.api.get("get", "namespaces").requests as f64;
    // Each waiter still looks at the Namespace about once a period...
    assert!(checks >= AGENTS as f64 * periods * 0.5, "{}", r.api);
    // ...but only about one of them evaluates in full. Unshared, it would be
    // every check (about AGENTS / 0.75 per period); the margin is for slow CI.
    assert!(
        lists <= 3.0 * periods,
        "{lists} Node lists in {periods:.1} periods: {}",
        r.api
    );
    assert!(
        lists >= 0.5 * periods,
        "someone keeps re-evaluating: {}",
        r.api
    );
    Ok(())
}
