//! The simulator through the production `kube` client: what drydock's
//! cluster code relies on must behave as against a real apiserver.

use std::time::{Duration, Instant};

use drydock::testing::sim::{
    Fault, NodeSpec, PdbSpec, PodSpec, ReplicaSetSpec, Scenario, SimHandle,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::Status;
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A client without kube's built-in retry of 429/503, so the tests see
/// each answer (the default client would retry a PDB 429 for minutes).
fn client(sim: &SimHandle) -> kube::Client {
    let mut cfg = sim.config();
    cfg.default_retry = false;
    kube::Client::try_from(cfg).expect("client")
}

fn api_status<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(30),
            ..Default::default()
        }),
    }
}

async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn lease_optimistic_concurrency_and_errors() -> TestResult {
    let sim = Scenario::cluster(1, 1).start().await?;
    let leases: Api<Lease> = Api::namespaced(client(&sim), "drydock");

    let created = leases
        .create(&PostParams::default(), &lease("slot-0", "a"))
        .await?;
    let rv0 = created.metadata.resource_version.clone().expect("rv");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());

    let dup = api_status(
        leases
            .create(&PostParams::default(), &lease("slot-0", "b"))
            .await,
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        dup.message,
        r#"leases.coordination.k8s.io "slot-0" already exists"#
    );
    let details = dup.details.expect("details");
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("slot-0", "leases")
    );

    // Two writers read the same version; only the first update wins.
    let mut w1 = created.clone();
    w1.spec.as_mut().expect("spec").holder_identity = Some("node-1".into());
    let mut w2 = created.clone();
    w2.spec.as_mut().expect("spec").holder_identity = Some("node-2".into());
    let won = leases
        .replace("slot-0", &PostParams::default(), &w1)
        .await?;
    let lost = api_status(leases.replace("slot-0", &PostParams::default(), &w2).await);
    assert_eq!((lost.code, lost.reason.as_str()), (409, "Conflict"));
    assert!(
        lost.message.contains("the object has been modified"),
        "{}",
        lost.message
    );
    let rv1: u64 = won.metadata.resource_version.clone().expect("rv").parse()?;
    assert!(rv1 > rv0.parse()?);
    let now = leases.get("slot-0").await?;
    assert_eq!(
        now.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("node-1")
    );

    // Leases need a resourceVersion on update; names must be DNS subdomains.
    let mut unversioned = won.clone();
    unversioned.metadata.resource_version = None;
    let st = api_status(
        leases
            .replace("slot-0", &PostParams::default(), &unversioned)
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    let st = api_status(
        leases
            .create(&PostParams::default(), &lease("Bad_Name", "x"))
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    assert!(st.message.contains("RFC 1123"), "{}", st.message);

    // Merge patch carrying a stale resourceVersion is a conflict too.
    let stale = json!({"metadata": {"resourceVersion": rv0}, "spec": {"holderIdentity": "x"}});
    let st = api_status(
        leases
            .patch("slot-0", &PatchParams::default(), &Patch::Merge(&stale))
            .await,
    );
    assert_eq!(st.code, 409);

    // Wrong field type: 400 like the apiserver's decoder; unknown path 404.
    let bad = json!({"spec": {"leaseDurationSeconds": "thirty"}});
    let st = api_status(
        leases
            .patch("slot-0", &PatchParams::default(), &Patch::Merge(&bad))
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (400, "BadRequest"));

    leases.delete("slot-0", &DeleteParams::default()).await?;
    let st = api_status(leases.get("slot-0").await);
    assert_eq!((st.code, st.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        st.message,
        r#"leases.coordination.k8s.io "slot-0" not found"#
    );
    let other_ns: Api<Lease> = Api::namespaced(client(&sim), "nope");
    let st = api_status(
        other_ns
            .create(&PostParams::default(), &lease("l", "a"))
            .await,
    );
    assert_eq!(
        (st.code, st.message.as_str()),
        (404, r#"namespaces "nope" not found"#)
    );
    Ok(())
}

fn names<K: kube::Resource>(l: Vec<K>) -> Vec<String> {
    let mut v: Vec<String> = l
        .into_iter()
        .filter_map(|o| o.meta().name.clone())
        .collect();
    v.sort();
    v
}

fn blocked_cluster() -> Scenario {
    Scenario::cluster(1, 3)
        .replica_set(ReplicaSetSpec::new("default", "web", 2).on_nodes(["worker-1", "worker-1"]))
        .pdb(
            PdbSpec::new("default", "web")
                .selector("app", "web")
                .min_available(1),
        )
        .pod(PodSpec::new("default", "loner", "worker-1"))
}

fn pods_of(sim: &SimHandle, node: &str, prefix: &str) -> Vec<Pod> {
    sim.pods_on_node(node)
        .into_iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

fn healthy(p: &Pod) -> bool {
    let st = p.status.as_ref();
    st.and_then(|s| s.phase.as_deref()) == Some("Running")
        && p.metadata.deletion_timestamp.is_none()
        && st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn eviction_allowed_blocked_and_missing() -> TestResult {
    let sim = blocked_cluster()
        .pdb(
            PdbSpec::new("default", "strict")
                .selector("app", "strict")
                .min_available(1),
        )
        .pod(PodSpec::new("default", "strict-0", "worker-2").label("app", "strict"))
        .start()
        .await?;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "default");

    // No PDB covers it: 201 and a Success status; the pod terminates.
    let st = pods.evict("loner", &EvictParams::default()).await?;
    assert!(st.is_success(), "{st:?}");
    let p = pods.get("loner").await?;
    assert!(p.metadata.deletion_timestamp.is_some());

    // The only healthy pod under minAvailable 1: 429 exactly like the apiserver.
    let st = api_status(pods.evict("strict-0", &EvictParams::default()).await);
    assert_eq!((st.code, st.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(
        st.message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    let cause = &st.details.expect("details").causes[0];
    assert_eq!(cause.reason, "DisruptionBudget");
    assert_eq!(
        cause.message,
        "The disruption budget strict needs 1 healthy pods and has 1 currently"
    );
    assert!(
        pods.get("strict-0")
            .await?
            .metadata
            .deletion_timestamp
            .is_none()
    );

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client(&sim), "default");
    let status = pdbs.get("strict").await?.status.expect("status");
    assert_eq!(
        (
            status.disruptions_allowed,
            status.current_healthy,
            status.desired_healthy,
            status.expected_pods
        ),
        (0, 1, 1, 1)
    );

    let st = api_status(pods.evict("ghost", &EvictParams::default()).await);
    assert_eq!((st.code, st.reason.as_str()), (404, "NotFound"));
    assert_eq!(st.message, r#"pods "ghost" not found"#);

    // An already-terminating pod can be evicted again.
    pods.evict("loner", &EvictParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn evicted_replica_set_pod_is_replaced_elsewhere_then_pdb_allows_next() -> TestResult {
    let sim = blocked_cluster().start().await?;
    let c = client(&sim);
    let nodes: Api<Node> = Api::all(c.clone());
    let pods: Api<Pod> = Api::namespaced(c, "default");
    let cordon = json!({"spec": {"unschedulable": true}});
    nodes
        .patch(
            "worker-1",
            &PatchParams::default(),
            &Patch::Strategic(&cordon),
        )
        .await?;

    let originals = pods_of(&sim, "worker-1", "web-");
    assert_eq!(originals.len(), 2);
    let (a, b) = (
        originals[0].metadata.name.clone().expect("name"),
        originals[1].metadata.name.clone().expect("name"),
    );
    pods.evict(&a, &EvictParams::default()).await?;
    // One terminating, the replacement still starting: minAvailable 1 is at its limit.
    let st = api_status(pods.evict(&b, &EvictParams::default()).await);
    assert_eq!(st.code, 429);

    wait_for("a healthy replacement", Duration::from_secs(5), || {
        sim.list::<Pod>(Some("default")).iter().any(|p| {
            let name = p.metadata.name.as_deref().unwrap_or("");
            name.starts_with("web-") && name != a && name != b && healthy(p)
        })
    })
    .await;
    let replacement = sim
        .list::<Pod>(Some("default"))
        .into_iter()
        .find(|p| {
            let name = p.metadata.name.as_deref().unwrap_or("");
            name.starts_with("web-") && name != a && name != b
        })
        .expect("replacement");
    let node = replacement.spec.as_ref().and_then(|s| s.node_name.clone());
    assert!(
        node.is_some() && node.as_deref() != Some("worker-1"),
        "{node:?}"
    );
    assert_ne!(replacement.metadata.uid, originals[0].metadata.uid);
    let owner = &replacement
        .metadata
        .owner_references
        .as_ref()
        .expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ReplicaSet", "web")
    );

    pods.evict(&b, &EvictParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn graceful_deletion_honours_grace_periods() -> TestResult {
    let sim = Scenario::cluster(0, 1)
        .pod(PodSpec::new("default", "slow", "worker-1").grace_period(2))
        .pod(PodSpec::new("default", "quick", "worker-1").grace_period(30))
        .pod(PodSpec::new("default", "body", "worker-1").grace_period(30))
        .start()
        .await?;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "default");

    let t0 = Instant::now();
    let deleted = pods.delete("slow", &DeleteParams::default()).await?;
    let pod = deleted.left().expect("pods answer with the object");
    assert!(pod.metadata.deletion_timestamp.is_some());
    assert_eq!(pod.metadata.deletion_grace_period_seconds, Some(2));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let still = pods.get("slow").await?;
    assert!(still.metadata.deletion_timestamp.is_some());
    while pods.get_opt("slow").await?.is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "not deleted after its grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "deleted too early: {:?}",
        t0.elapsed()
    );

    // Zero in the query: gone at once, despite a 30s default.
    pods.delete("quick", &DeleteParams::default().grace_period(0))
        .await?;
    assert!(pods.get_opt("quick").await?.is_none());

    // Grace from a DeleteOptions body (kube sends it there).
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    pods.delete("body", &dp).await?;
    assert!(pods.get_opt("body").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn watch_is_ordered_and_too_old_versions_get_410() -> TestResult {
    let sim = Scenario::new().history_limit(20).start().await?;
    let leases: Api<Lease> = Api::namespaced(client(&sim), "drydock");
    let start = sim.resource_version().to_string();
    let wp = WatchParams::default().timeout(10);
    let stream = leases.watch(&wp, &start).await?;

    let created = leases
        .create(&PostParams::default(), &lease("w", "a"))
        .await?;
    let patch = json!({"spec": {"holderIdentity": "b"}});
    leases
        .patch("w", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    leases.delete("w", &DeleteParams::default()).await?;

    let events: Vec<WatchEvent<Lease>> = stream.take(3).try_collect().await?;
    let mut last = 0u64;
    let mut kinds = vec![];
    for e in &events {
        let (k, l) = match e {
            WatchEvent::Added(l) => ("ADDED", l),
            WatchEvent::Modified(l) => ("MODIFIED", l),
            WatchEvent::Deleted(l) => ("DELETED", l),
            other => panic!("unexpected {other:?}"),
        };
        let rv: u64 = l.metadata.resource_version.clone().expect("rv").parse()?;
        assert!(rv > last, "resourceVersions must increase");
        last = rv;
        kinds.push(k);
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    assert_eq!(
        created.metadata.resource_version.as_deref(),
        Some((start.parse::<u64>()? + 1).to_string().as_str())
    );

    // A later watch from the same point replays the retained history.
    let replay: Vec<WatchEvent<Lease>> = leases
        .watch(&wp, &start)
        .await?
        .take(3)
        .try_collect()
        .await?;
    assert!(matches!(replay[2], WatchEvent::Deleted(_)));

    // Push the start out of the retained history: 410 Expired as an ERROR event.
    for i in 0..25 {
        leases
            .create(&PostParams::default(), &lease(&format!("x{i}"), "a"))
            .await?;
    }
    let mut old = leases.watch(&wp, &start).await?.boxed();
    match old.try_next().await? {
        Some(WatchEvent::Error(st)) => {
            assert_eq!((st.code, st.reason.as_str()), (410, "Expired"));
            assert!(
                st.message.starts_with("too old resource version"),
                "{}",
                st.message
            );
        }
        other => panic!("expected 410, got {other:?}"),
    }
    // "0" means start from the current state: synthetic ADDED events.
    let initial: Vec<WatchEvent<Lease>> =
        leases.watch(&wp, "0").await?.take(25).try_collect().await?;
    assert!(initial.iter().all(|e| matches!(e, WatchEvent::Added(_))));

    // A named watch (fieldSelector metadata.name=) sees only its object.
    let named = WatchParams::default().fields("metadata.name=x3").timeout(5);
    let mut s = leases
        .watch(&named, &sim.resource_version().to_string())
        .await?
        .boxed();
    leases.delete("x2", &DeleteParams::default()).await?;
    leases.delete("x3", &DeleteParams::default()).await?;
    match s.try_next().await? {
        Some(WatchEvent::Deleted(l)) => assert_eq!(l.metadata.name.as_deref(), Some("x3")),
        other => panic!("expected x3 deleted, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn node_patches_and_updates() -> TestResult {
    let sim = Scenario::cluster(1, 2).start().await?;
    let c = client(&sim);
    let nodes: Api<Node> = Api::all(c.clone());

    let cordon = json!({"spec": {"unschedulable": true}});
    let n = nodes
        .patch(
            "worker-1",
            &PatchParams::default(),
            &Patch::Strategic(&cordon),
        )
        .await?;
    assert_eq!(n.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    let uncordon = json!({"spec": {"unschedulable": null}});
    let n = nodes
        .patch(
            "worker-1",
            &PatchParams::default(),
            &Patch::Merge(&uncordon),
        )
        .await?;
    assert_eq!(n.spec.as_ref().and_then(|s| s.unschedulable), None);

    let ann = json!({"metadata": {"annotations": {"drydock.dev/state": "draining"}}});
    let n = nodes
        .patch("worker-1", &PatchParams::default(), &Patch::Strategic(&ann))
        .await?;
    let ops = json!([
        {"op": "add", "path": "/metadata/labels/drydock.dev~1pool", "value": "a"},
        {"op": "remove", "path": "/metadata/annotations/drydock.dev~1state"}
    ]);
    let rv_before = n.metadata.resource_version.clone();
    // kube's Patch::Json needs a feature drydock does not enable; send it raw.
    let req = http::Request::patch("/api/v1/nodes/worker-1")
        .header("Content-Type", "application/json-patch+json")
        .body(serde_json::to_vec(&ops)?)?;
    let n: Node = c.request(req).await?;
    assert_eq!(
        n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("drydock.dev/pool"))
            .map(String::as_str),
        Some("a")
    );
    assert!(
        n.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key("drydock.dev/state"))
    );

    // PUT with the old resourceVersion: 409.
    let mut stale = n.clone();
    stale.metadata.resource_version = rv_before;
    let st = api_status(
        nodes
            .replace("worker-1", &PostParams::default(), &stale)
            .await,
    );
    assert_eq!(st.code, 409);
    // A no-op patch does not bump the resourceVersion.
    let again = nodes
        .patch(
            "worker-1",
            &PatchParams::default(),
            &Patch::Merge(&json!({})),
        )
        .await?;
    assert_eq!(again.metadata.resource_version, n.metadata.resource_version);

    // Status: conditions, kubelet version, bootID, heartbeat, all via the handle.
    let ready_since = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter().find(|c| c.type_ == "Ready").map(|c| {
                    (
                        c.status.clone(),
                        c.last_transition_time.clone(),
                        c.last_heartbeat_time.clone(),
                    )
                })
            })
    };
    let before = ready_since(&nodes.get("worker-2").await?).expect("ready");
    assert_eq!(before.0, "True");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.set_node_ready("worker-2", false)?;
    sim.set_kubelet_version("worker-2", "v1.35.0")?;
    sim.set_boot_id("worker-2", "boot-2")?;
    let n2 = nodes.get("worker-2").await?;
    let after = ready_since(&n2).expect("ready");
    assert_eq!(after.0, "False");
    assert!(after.1 > before.1, "lastTransitionTime must move");
    let info = n2
        .status
        .as_ref()
        .and_then(|s| s.node_info.clone())
        .expect("nodeInfo");
    assert_eq!(
        (info.kubelet_version.as_str(), info.boot_id.as_str()),
        ("v1.35.0", "boot-2")
    );
    let hb = "2030-01-01T00:00:00Z".parse::<jiff::Timestamp>()?;
    sim.set_node_heartbeat("worker-2", hb)?;
    let after = ready_since(&nodes.get("worker-2").await?).expect("ready");
    assert_eq!(after.2.map(|t| t.0), Some(hb));

    // Status writes through /status; main-resource writes ignore status.
    let mut st_patch = json!({"status": {"nodeInfo": {"bootID": "from-status"}}});
    nodes
        .patch_status(
            "worker-2",
            &PatchParams::default(),
            &Patch::Merge(&st_patch),
        )
        .await?;
    st_patch["status"]["nodeInfo"]["bootID"] = json!("ignored");
    nodes
        .patch(
            "worker-2",
            &PatchParams::default(),
            &Patch::Merge(&st_patch),
        )
        .await?;
    let boot = nodes
        .get("worker-2")
        .await?
        .status
        .and_then(|s| s.node_info)
        .map(|i| i.boot_id);
    assert_eq!(boot.as_deref(), Some("from-status"));
    Ok(())
}

#[tokio::test]
async fn selectors_filter_lists() -> TestResult {
    let sim = Scenario::cluster(1, 2)
        .daemon_set(drydock::testing::sim::DaemonSetSpec::new(
            "kube-system",
            "calico-node",
        ))
        .replica_set(ReplicaSetSpec::new("default", "web", 2).on_nodes(["worker-1", "worker-2"]))
        .pod(
            PodSpec::new("default", "done", "worker-1")
                .phase("Succeeded")
                .label("app", "batch"),
        )
        .start()
        .await?;
    let c = client(&sim);
    let pods: Api<Pod> = Api::all(c.clone());

    let on_w1 = pods
        .list(&ListParams::default().fields("spec.nodeName=worker-1"))
        .await?;
    assert_eq!(on_w1.items.len(), 3, "web, calico-node, done");
    let running_w1 = pods
        .list(&ListParams::default().fields("spec.nodeName=worker-1,status.phase!=Succeeded"))
        .await?;
    assert_eq!(running_w1.items.len(), 2);
    let not_w1 = pods
        .list(&ListParams::default().fields("spec.nodeName!=worker-1"))
        .await?;
    assert!(
        not_w1
            .items
            .iter()
            .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some("worker-1"))
    );
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=done"))
        .await?;
    assert_eq!(names(by_name.items), ["done"]);

    let web = pods
        .list(&ListParams::default().labels("app in (web)"))
        .await?;
    assert_eq!(web.items.len(), 2);
    let web_eq = pods.list(&ListParams::default().labels("app==web")).await?;
    assert_eq!(web_eq.items.len(), 2);
    let not_web = pods
        .list(&ListParams::default().labels("app,app notin (web)"))
        .await?;
    assert_eq!(names(not_web.items), ["done"]);
    let no_app = pods.list(&ListParams::default().labels("!app")).await?;
    assert!(no_app.items.iter().all(|p| {
        p.metadata
            .labels
            .as_ref()
            .is_none_or(|l| !l.contains_key("app"))
    }));
    assert!(
        !no_app.items.is_empty(),
        "DaemonSet pods have k8s-app, not app"
    );
    let ds_pods = pods
        .list(&ListParams::default().labels("k8s-app=calico-node"))
        .await?;
    assert_eq!(ds_pods.items.len(), 3);

    let nodes: Api<Node> = Api::all(c.clone());
    let cps = nodes
        .list(&ListParams::default().labels("node-role.kubernetes.io/control-plane"))
        .await?;
    assert_eq!(names(cps.items), ["cp-1"]);
    let one = nodes
        .list(&ListParams::default().fields("metadata.name=worker-2"))
        .await?;
    assert_eq!(names(one.items), ["worker-2"]);

    // Paging: limit + continue returns everything once.
    let first = pods.list(&ListParams::default().limit(2)).await?;
    let token = first.metadata.continue_.clone().expect("continue");
    let rest = pods
        .list(&ListParams::default().limit(100).continue_token(&token))
        .await?;
    assert_eq!(
        first.items.len() + rest.items.len(),
        pods.list(&ListParams::default()).await?.items.len()
    );

    let st = api_status(
        pods.list(&ListParams::default().fields("spec.bogus=1"))
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (400, "BadRequest"));
    let st = api_status(pods.list(&ListParams::default().labels("app in (")).await);
    assert_eq!(st.code, 400);

    // DaemonSet status is computed from its pods.
    let ds: Api<DaemonSet> = Api::namespaced(c, "kube-system");
    let s = ds.get("calico-node").await?.status.expect("status");
    assert_eq!(
        (
            s.desired_number_scheduled,
            s.number_ready,
            s.number_available
        ),
        (3, 3, Some(3))
    );
    sim.set_node_ready("worker-2", false)?;
    let s = ds.get("calico-node").await?.status.expect("status");
    assert_eq!(s.number_ready, 2);
    Ok(())
}

#[tokio::test]
async fn pdb_percentages_and_node_lifecycle() -> TestResult {
    let sim = Scenario::cluster(0, 3)
        .replica_set(
            ReplicaSetSpec::new("default", "web", 4)
                .on_nodes(["worker-1", "worker-2", "worker-3", "worker-3"]),
        )
        .pdb(
            PdbSpec::new("default", "web")
                .selector("app", "web")
                .max_unavailable_percent(50),
        )
        .pod_start_delay(Duration::from_millis(50))
        .start()
        .await?;
    let pdb = || {
        sim.get::<PodDisruptionBudget>(Some("default"), "web")
            .and_then(|p| p.status)
            .expect("status")
    };
    let s = pdb();
    assert_eq!(
        (s.expected_pods, s.desired_healthy, s.disruptions_allowed),
        (4, 2, 2)
    );

    // Raising the budget takes effect at once (and bumps the generation).
    sim.modify::<PodDisruptionBudget>(Some("default"), "web", |p| {
        let spec = p.spec.get_or_insert_with(Default::default);
        spec.max_unavailable = None;
        spec.min_available = Some(IntOrString::String("100%".into()));
    })?;
    let s = pdb();
    assert_eq!((s.desired_healthy, s.disruptions_allowed), (4, 0));
    assert_eq!(s.observed_generation, Some(2));

    // A rebooting node: its pods go unready, then Ready again after it returns.
    let boot = sim
        .simulate_reboot("worker-3", Duration::from_millis(100))
        .await?;
    let node = sim.get::<Node>(None, "worker-3").expect("node");
    assert_eq!(
        node.status.and_then(|s| s.node_info).map(|i| i.boot_id),
        Some(boot)
    );
    wait_for(
        "pods on worker-3 ready again",
        Duration::from_secs(3),
        || pods_of(&sim, "worker-3", "web-").iter().all(healthy),
    )
    .await;

    // Deleting a node garbage-collects its pods; the ReplicaSet replaces them.
    sim.add_node(NodeSpec::worker("worker-4"))?;
    sim.delete_node("worker-1")?;
    assert!(sim.pods_on_node("worker-1").is_empty());
    wait_for("4 healthy web pods", Duration::from_secs(3), || {
        sim.list::<Pod>(Some("default"))
            .iter()
            .filter(|p| healthy(p))
            .count()
            == 4
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn faults_stop_restart_and_request_accounting() -> TestResult {
    let sim = Scenario::cluster(1, 1).start().await?;
    let c = client(&sim);
    let nodes: Api<Node> = Api::all(c.clone());
    sim.reset_stats();
    nodes.list(&ListParams::default()).await?;
    nodes.get("cp-1").await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "kube-system");
    let _ = pods.evict("etcd-cp-1", &EvictParams::default()).await?;
    let stats = sim.stats();
    assert_eq!(stats.get("list", "nodes").requests, 1);
    assert_eq!(stats.get("get", "nodes").requests, 1);
    assert_eq!(stats.get("create", "pods/eviction").requests, 1);
    assert_eq!(stats.total.requests, 3);
    assert!(stats.get("list", "nodes").response_bytes > 500);
    assert!(stats.total.request_bytes > 0);

    sim.set_fault(Some(Fault::Status(503)));
    let st = api_status(nodes.get("cp-1").await);
    assert_eq!(st.code, 503);
    sim.set_fault(None);
    nodes.get("cp-1").await?;

    sim.stop().await;
    // A fresh client: pooled connections to the stopped server are gone.
    let down: Api<Node> = Api::all(client(&sim));
    assert!(down.get("cp-1").await.is_err());
    sim.restart().await?;
    let up: Api<Node> = Api::all(client(&sim));
    up.get("cp-1").await?;
    Ok(())
}

#[tokio::test]
async fn events_can_be_created_and_listed() -> TestResult {
    use k8s_openapi::api::core::v1::{Event, ObjectReference};
    use k8s_openapi::api::events::v1::Event as EventV1;
    let sim = Scenario::cluster(0, 1).start().await?;
    let c = client(&sim);

    let core: Api<Event> = Api::namespaced(c.clone(), "drydock");
    let ev = Event {
        metadata: ObjectMeta {
            generate_name: Some("worker-1.".into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Node".into()),
            name: Some("worker-1".into()),
            ..Default::default()
        },
        reason: Some("Draining".into()),
        message: Some("drydock is draining worker-1".into()),
        type_: Some("Normal".into()),
        ..Default::default()
    };
    let created = core.create(&PostParams::default(), &ev).await?;
    assert!(
        created
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("worker-1."))
    );
    let listed = core
        .list(&ListParams::default().fields("involvedObject.name=worker-1,reason=Draining"))
        .await?;
    assert_eq!(listed.items.len(), 1);
    let all: Api<Event> = Api::all(c.clone());
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 1);

    let v1: Api<EventV1> = Api::namespaced(c, "drydock");
    let ev = serde_json::from_value::<EventV1>(json!({
        "metadata": {"name": "worker-1.reboot"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "drydock.dev/agent",
        "reportingInstance": "worker-1",
        "action": "Reboot",
        "reason": "Rebooting",
        "type": "Normal",
        "regarding": {"kind": "Node", "name": "worker-1"},
        "note": "rebooting for a new kernel",
    }))?;
    v1.create(&PostParams::default(), &ev).await?;
    let got = v1.get("worker-1.reboot").await?;
    assert_eq!(got.note.as_deref(), Some("rebooting for a new kernel"));
    // One store, as in the API server: each API shows both Events.
    assert_eq!(v1.list(&ListParams::default()).await?.items.len(), 2);
    let as_core = core.get("worker-1.reboot").await?;
    assert_eq!(
        as_core.message.as_deref(),
        Some("rebooting for a new kernel")
    );
    assert_eq!(as_core.involved_object.name.as_deref(), Some("worker-1"));
    let created_name = created.metadata.name.unwrap();
    let as_v1 = v1.get(&created_name).await?;
    assert_eq!(as_v1.note.as_deref(), Some("drydock is draining worker-1"));
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 2);
    Ok(())
}
