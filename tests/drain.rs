//! Cordon, drain and post-reboot verification against the simulator,
//! through the real `kube` client.

use std::time::{Duration, Instant};

use drydock::testing::cluster::drain::{
    self, BlockReason, DrainError, DrainOptions, DrainProgress, DrainRules, RefuseReason,
    SkipReason,
};
use drydock::testing::cluster::node::{NodeClient, STATE_ANNOTATION};
use drydock::testing::config::NamespacedName;
use drydock::testing::host::boot::BootId;
use drydock::testing::sim::{
    DaemonSetSpec, NodeSpec, PdbSpec, PodSpec, ReplicaSetSpec, Scenario, SimHandle,
};
use drydock::testing::verify::{self, Problem, VerifyInputs, VerifyOutcome};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use tokio::sync::watch;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// No kube-level retry of 429: the drain must see each answer itself.
fn client(sim: &SimHandle) -> kube::Client {
    let mut cfg = sim.config();
    cfg.default_retry = false;
    kube::Client::try_from(cfg).expect("client")
}

fn options(rules: DrainRules) -> DrainOptions {
    DrainOptions {
        rules,
        timeout: Duration::from_secs(20),
        retry_interval: Duration::from_millis(100),
        poll_interval: Duration::from_millis(50),
        delete_pdb_blocked_after: None,
        pre_drain_wait: Duration::ZERO,
        pod_selector: String::new(),
    }
}

const LENIENT: DrainRules = DrainRules {
    delete_emptydir_data: true,
    evict_unmanaged: true,
};
const STRICT: DrainRules = DrainRules {
    delete_emptydir_data: false,
    evict_unmanaged: false,
};

fn names_on(sim: &SimHandle, node: &str) -> Vec<String> {
    let mut v: Vec<String> = sim
        .pods_on_node(node)
        .iter()
        .map(|p| p.name_any())
        .collect();
    v.sort();
    v
}

fn unschedulable(sim: &SimHandle, node: &str) -> bool {
    sim.get::<Node>(None, node)
        .and_then(|n| n.spec)
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

#[tokio::test]
async fn drains_managed_pods_and_leaves_daemonset_and_mirror_pods() -> TestResult {
    let sim = Scenario::cluster(1, 2)
        .default_grace_period(0)
        .daemon_set(DaemonSetSpec::new("kube-system", "kube-proxy"))
        .replica_set(ReplicaSetSpec::new("default", "web", 2).on_nodes(["worker-1", "worker-1"]))
        .replica_set(
            ReplicaSetSpec::new("default", "cache", 1)
                .on_nodes(["worker-1"])
                .empty_dir(),
        )
        .pod(PodSpec::new("default", "loner", "worker-1"))
        .pod(PodSpec::new("default", "job-done", "worker-1").phase("Succeeded"))
        .pod(PodSpec::new("kube-system", "static-thing-worker-1", "worker-1").mirror())
        .start()
        .await?;
    let c = client(&sim);
    let node = NodeClient::new(c.clone(), "worker-1");
    assert!(!node.cordon().await?.was_unschedulable);
    assert!(unschedulable(&sim, "worker-1"));

    let (tx, rx) = watch::channel(DrainProgress::default());
    let report = drain::drain(&c, "worker-1", &options(LENIENT), &tx).await?;

    let left = names_on(&sim, "worker-1");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().any(|n| n.starts_with("kube-proxy-")),
        "{left:?}"
    );
    assert!(
        left.contains(&"static-thing-worker-1".to_string()),
        "{left:?}"
    );
    assert_eq!(report.evicted.len(), 4, "{report:?}"); // web x2, cache, loner
    assert_eq!(
        report
            .deleted_completed
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["job-done"]
    );
    let skipped: Vec<SkipReason> = report.skipped.iter().map(|(_, r)| *r).collect();
    assert!(skipped.contains(&SkipReason::DaemonSet) && skipped.contains(&SkipReason::Mirror));
    // The ReplicaSets brought their pods back elsewhere.
    let web_elsewhere = sim
        .pods_on_node("worker-2")
        .iter()
        .filter(|p| p.name_any().starts_with("web-"))
        .count();
    assert_eq!(web_elsewhere, 2);
    assert_eq!(
        *rx.borrow(),
        DrainProgress {
            total: 5,
            left: 0,
            blocked: vec![]
        }
    );
    Ok(())
}

#[tokio::test]
async fn strict_rules_refuse_up_front_and_list_the_pods() -> TestResult {
    let sim = Scenario::cluster(1, 2)
        .default_grace_period(0)
        .replica_set(ReplicaSetSpec::new("default", "web", 1).on_nodes(["worker-1"]))
        .replica_set(
            ReplicaSetSpec::new("default", "cache", 1)
                .on_nodes(["worker-1"])
                .empty_dir(),
        )
        .pod(PodSpec::new("default", "loner", "worker-1"))
        .start()
        .await?;
    let c = client(&sim);
    let before = names_on(&sim, "worker-1");
    let (tx, _) = watch::channel(DrainProgress::default());
    let err = drain::drain(&c, "worker-1", &options(STRICT), &tx)
        .await
        .expect_err("must refuse");
    let DrainError::Refused { node, pods } = &err else {
        panic!("expected Refused, got {err:?}");
    };
    assert_eq!(node, "worker-1");
    let mut listed: Vec<(String, Vec<RefuseReason>)> = pods
        .iter()
        .map(|(p, r)| (p.name.clone(), r.clone()))
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed[0].0.starts_with("cache-"));
    assert_eq!(listed[0].1, [RefuseReason::EmptyDir]);
    assert_eq!(
        listed[1],
        ("loner".to_string(), vec![RefuseReason::Unmanaged])
    );
    assert!(
        err.to_string().contains("default/loner has no controller"),
        "{err}"
    );
    // Nothing was evicted, not even the pod that could have been.
    assert_eq!(names_on(&sim, "worker-1"), before);
    Ok(())
}

#[tokio::test]
async fn pdb_blocked_pod_is_retried_reported_and_evicted_once_replacement_is_ready() -> TestResult {
    // Two web pods on worker-1 under maxUnavailable 1: the second eviction
    // is refused until the first one's replacement is Ready on worker-2.
    let sim = Scenario::cluster(1, 2)
        .default_grace_period(0)
        .pod_start_delay(Duration::from_millis(1500))
        .replica_set(
            ReplicaSetSpec::new("default", "web", 3).on_nodes(["worker-1", "worker-1", "worker-2"]),
        )
        .pdb(
            PdbSpec::new("default", "web")
                .selector("app", "web")
                .max_unavailable(1),
        )
        .start()
        .await?;
    let c = client(&sim);
    NodeClient::new(c.clone(), "worker-1").cordon().await?;
    let (tx, mut rx) = watch::channel(DrainProgress::default());
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            if !p.blocked.is_empty() {
                seen.push(p);
            }
        }
        seen
    });
    let started = Instant::now();
    let retries_before = drain::eviction_retries();
    let report = drain::drain(&c, "worker-1", &options(LENIENT), &tx).await?;
    drop(tx);
    // Counted for drydock_evictions_retried_total (tests run concurrently:
    // at least this drain's refusals).
    assert!(drain::eviction_retries() > retries_before);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.evicted.len(), 2);
    assert!(names_on(&sim, "worker-1").is_empty());

    let blocked = watcher.await?;
    let first = blocked.first().expect("the block was reported");
    // The first pod's deletion (seen through the watch) may arrive just
    // before or just after the second pod's refusal.
    assert!(matches!(first.left, 1 | 2), "{first:?}");
    assert_eq!(first.blocked.len(), 1);
    match &first.blocked[0].reason {
        BlockReason::DisruptionBudget { pdbs, message } => {
            assert_eq!(pdbs, &["web".to_string()]);
            assert!(
                message.contains("The disruption budget web needs 2 healthy pods"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

fn never_allowing() -> Scenario {
    Scenario::cluster(1, 2)
        .default_grace_period(0)
        .replica_set(ReplicaSetSpec::new("default", "db", 1).on_nodes(["worker-1"]))
        .replica_set(ReplicaSetSpec::new("default", "web", 1).on_nodes(["worker-1"]))
        .pdb(
            PdbSpec::new("default", "db")
                .selector("app", "db")
                .min_available(1),
        )
}

#[tokio::test]
async fn timeout_returns_the_blocking_pods_and_uncordon_restores_the_node() -> TestResult {
    let sim = never_allowing().start().await?;
    let c = client(&sim);
    let node = NodeClient::new(c.clone(), "worker-1");
    let cordon = node.cordon().await?;
    let mut opts = options(LENIENT);
    opts.timeout = Duration::from_millis(800);
    let (tx, rx) = watch::channel(DrainProgress::default());
    let started = Instant::now();
    let err = drain::drain(&c, "worker-1", &opts, &tx)
        .await
        .expect_err("must time out");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let DrainError::TimedOut(t) = &err else {
        panic!("expected TimedOut, got {err:?}");
    };
    assert_eq!(t.blocked.len(), 1, "{t:?}");
    assert!(t.blocked[0].pod.name.starts_with("db-"));
    assert!(matches!(
        &t.blocked[0].reason,
        BlockReason::DisruptionBudget { pdbs, .. } if pdbs == &["db".to_string()]
    ));
    // What could go, went.
    assert_eq!(t.partial.evicted.len(), 1);
    assert!(t.partial.evicted[0].name.starts_with("web-"));
    assert!(err.to_string().contains("disruption budget db"), "{err}");
    assert_eq!(rx.borrow().left, 1);

    // The caller's recovery: we cordoned, so we uncordon.
    assert!(!cordon.was_unschedulable);
    node.uncordon().await?;
    assert!(!unschedulable(&sim, "worker-1"));
    Ok(())
}

#[tokio::test]
async fn pdb_blocked_pod_is_deleted_after_the_configured_time() -> TestResult {
    let sim = never_allowing().start().await?;
    let c = client(&sim);
    NodeClient::new(c.clone(), "worker-1").cordon().await?;
    let db_before = sim
        .pods_on_node("worker-1")
        .into_iter()
        .find(|p| p.name_any().starts_with("db-"))
        .expect("db pod");
    let mut opts = options(LENIENT);
    opts.delete_pdb_blocked_after = Some(Duration::from_millis(400));
    let (tx, _) = watch::channel(DrainProgress::default());
    let report = drain::drain(&c, "worker-1", &opts, &tx).await?;
    assert_eq!(report.deleted_pdb_blocked.len(), 1, "{report:?}");
    let forced = &report.deleted_pdb_blocked[0];
    assert_eq!(forced.pod.name, db_before.name_any());
    assert_eq!(forced.pdbs, ["db"]);
    assert!(forced.blocked_for >= Duration::from_millis(400));
    assert!(names_on(&sim, "worker-1").is_empty());
    Ok(())
}

#[tokio::test]
async fn terminating_pods_are_awaited_and_selector_limits_the_drain() -> TestResult {
    let sim = Scenario::cluster(1, 2)
        .pod(PodSpec::new("default", "slow", "worker-1").grace_period(2))
        .pod(
            PodSpec::new("default", "picked", "worker-1")
                .label("drain", "yes")
                .grace_period(0),
        )
        .pod(PodSpec::new("default", "ignored", "worker-1").grace_period(1))
        .start()
        .await?;
    let c = client(&sim);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.delete("slow", &DeleteParams::default()).await?;
    assert!(
        pods.get("slow")
            .await?
            .metadata
            .deletion_timestamp
            .is_some()
    );

    let mut opts = options(LENIENT);
    opts.pod_selector = "drain=yes".into();
    let (tx, _) = watch::channel(DrainProgress::default());
    let report = drain::drain(&c, "worker-1", &opts, &tx).await?;
    assert_eq!(
        report
            .evicted
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["picked"]
    );
    assert!(report.awaited.is_empty());
    assert_eq!(names_on(&sim, "worker-1"), ["ignored", "slow"]);

    // Without a selector the terminating pod is waited for, never refused
    // (it is unmanaged and the rules are strict).
    let (tx, _) = watch::channel(DrainProgress::default());
    opts.rules = STRICT;
    opts.pod_selector = "app notin (x)".into(); // every pod
    pods.delete("ignored", &DeleteParams::default()).await?;
    let report = drain::drain(&c, "worker-1", &opts, &tx).await?;
    let mut awaited: Vec<&str> = report.awaited.iter().map(|p| p.name.as_str()).collect();
    awaited.sort();
    assert_eq!(awaited, ["ignored", "slow"]);
    assert!(report.evicted.is_empty());
    assert!(names_on(&sim, "worker-1").is_empty());
    Ok(())
}

#[tokio::test]
async fn cordon_reports_an_admin_cordon_and_annotations_round_trip() -> TestResult {
    let sim = Scenario::new()
        .node(NodeSpec::worker("admin-cordoned").unschedulable())
        .node(NodeSpec::worker("fresh"))
        .start()
        .await?;
    let c = client(&sim);
    let admin = NodeClient::new(c.clone(), "admin-cordoned");
    assert!(admin.cordon().await?.was_unschedulable);
    assert!(unschedulable(&sim, "admin-cordoned"));

    let fresh = NodeClient::new(c.clone(), "fresh");
    assert!(!fresh.cordon().await?.was_unschedulable);
    // A second cordon (e.g. after a crash) sees our own cordon.
    assert!(fresh.cordon().await?.was_unschedulable);
    fresh.uncordon().await?;
    assert!(!unschedulable(&sim, "fresh"));

    fresh.set_annotation(STATE_ANNOTATION, "draining").await?;
    let n = fresh.get().await?;
    assert_eq!(
        n.annotations().get(STATE_ANNOTATION).map(String::as_str),
        Some("draining")
    );
    fresh.clear_annotation(STATE_ANNOTATION).await?;
    assert!(
        !fresh
            .get()
            .await?
            .annotations()
            .contains_key(STATE_ANNOTATION)
    );

    let ghost = NodeClient::new(c, "ghost");
    assert!(ghost.get_opt().await?.is_none());
    let err = ghost.cordon().await.expect_err("no such node");
    assert_eq!(err.to_string(), "node ghost does not exist");
    Ok(())
}

fn inputs_for<'a>(
    before: &'a BootId,
    now: &'a BootId,
    started: jiff::Timestamp,
    required: &'a [NamespacedName],
    checks_dir: &'a std::path::Path,
) -> VerifyInputs<'a> {
    VerifyInputs {
        node: "worker-1",
        boot_id_before: Some(before),
        boot_id_now: now,
        boot_started: started,
        required_daemonsets: required,
        checks_dir: Some(checks_dir),
        check_timeout: Duration::from_secs(5),
    }
}

fn write_check(dir: &std::path::Path, exit: i32) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("10-exit");
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho exiting {exit}\nexit {exit}\n"),
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test]
async fn verification_after_a_simulated_reboot() -> TestResult {
    let sim = Scenario::cluster(1, 1)
        .pod_start_delay(Duration::from_millis(300))
        .daemon_set(DaemonSetSpec::new("kube-system", "calico-node"))
        .start()
        .await?;
    let c = client(&sim);
    let reported = |sim: &SimHandle| -> Option<BootId> {
        let node = sim.get::<Node>(None, "worker-1")?;
        BootId::parse(drydock::testing::cluster::node::boot_id(&node)?)
    };
    let before = reported(&sim).expect("boot id");
    let checks = tempfile::tempdir()?;
    write_check(checks.path(), 1);
    let required = vec![NamespacedName {
        namespace: "kube-system".into(),
        name: "calico-node".into(),
    }];
    let dir = checks.path();
    let inputs = |now, started| inputs_for(&before, now, started, &required, dir);

    // Same boot: nothing happened yet.
    let obs = verify::gather(&c, &inputs(&before, jiff::Timestamp::now())).await?;
    assert_eq!(verify::evaluate(&obs), VerifyOutcome::NotRebooted);

    let boot_started = jiff::Timestamp::now();
    let now = BootId::parse(
        &sim.simulate_reboot("worker-1", Duration::from_millis(200))
            .await?,
    )
    .expect("new boot id");
    assert_eq!(reported(&sim).as_ref(), Some(&now));

    // Node back, calico pod not Ready yet: waiting, checks not run.
    let obs = verify::gather(&c, &inputs(&now, boot_started)).await?;
    let VerifyOutcome::Waiting { problems } = verify::evaluate(&obs) else {
        panic!("expected Waiting: {obs:?}");
    };
    assert!(
        matches!(
            problems[..],
            [Problem::DaemonSetPodNotReady { .. }, Problem::ChecksNotRun]
        ),
        "{problems:?}"
    );
    assert!(obs.checks.is_none());

    // Pod Ready again: the failing check is what remains.
    let deadline = Instant::now() + Duration::from_secs(5);
    let problems = loop {
        let obs = verify::gather(&c, &inputs(&now, boot_started)).await?;
        match verify::evaluate(&obs) {
            VerifyOutcome::Waiting { problems } if obs.checks.is_some() => break problems,
            other => assert!(Instant::now() < deadline, "stuck at {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        verify::describe(&problems),
        "check 10-exit exited 1: exiting 1"
    );

    write_check(checks.path(), 0);
    let obs = verify::gather(&c, &inputs(&now, boot_started)).await?;
    assert_eq!(verify::evaluate(&obs), VerifyOutcome::Passed, "{obs:?}");

    // A node that goes NotReady again fails verification.
    sim.set_node_ready("worker-1", false)?;
    let obs = verify::gather(&c, &inputs(&now, boot_started)).await?;
    let VerifyOutcome::Waiting { problems } = verify::evaluate(&obs) else {
        panic!("expected Waiting: {obs:?}");
    };
    assert!(
        matches!(problems[0], Problem::NodeNotReady { .. }),
        "{problems:?}"
    );
    Ok(())
}
